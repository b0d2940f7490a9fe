// Debian liblzma-dev: the .xz and legacy .lzma decoders.
#include <lzma.h>
