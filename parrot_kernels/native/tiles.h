/* The AMX tile configuration the tile kernels load (tile_matmul.c, shared_decode.c): palette
 * 1, each tile's rows and bytes per row. */
#ifndef PARROT_TILES_H
#define PARROT_TILES_H

#include <stdint.h>

typedef struct {
  uint8_t palette;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
} tile_config;

#endif
