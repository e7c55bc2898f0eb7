"""SGLang behind Parrot's engine protocol, plus a Parrot scheduling plugin for SGLang itself."""
