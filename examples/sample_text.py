"""A short article for the summary examples (original text), split into chunks."""

ARTICLE = """\
Lighthouses began as open fires on hilltops. Sailors approaching a rocky coast at night
needed a fixed point to steer by, and a beacon kept burning by a watchman was the oldest
answer. The famous tower at Alexandria carried such a fire more than two thousand years ago.

For centuries the light itself barely changed. Keepers burned wood, then coal, then candles
and oil lamps, and most of that light was wasted: it spread in every direction, including
up into the sky and down into the sea, where no ship would ever see it.

The great change came in the nineteenth century with lenses built from rings of glass
prisms. Such a lens bent the light of a single lamp into a narrow horizontal beam that could
be seen twenty miles away, and it weighed far less than a solid lens of the same power.

Each lighthouse also needed to be recognised. Engineers gave every station its own pattern:
a number of flashes, a colour, or a rhythm of light and dark, printed in the charts so that
a navigator could tell one headland from the next by timing the flashes with a watch.

Life as a keeper was lonely and exacting. The lamp had to be trimmed and the lens polished
every day, the clockwork that turned the lens wound every few hours, and a log kept of the
weather and of every ship that passed, often for months without relief.

Today almost every lighthouse is automatic. Electric lamps, light sensors and satellite
navigation have replaced the keepers, yet many towers still shine each night, both as
backup for ships whose electronics fail and as landmarks that coastal towns refuse to lose.
"""


def chunks(text: str = ARTICLE) -> list[str]:
    """One chunk per paragraph."""
    return [" ".join(p.split()) for p in text.split("\n\n") if p.strip()]
