// Debian liblz4-dev: LZ4 block decompression (the kernel uses the legacy frame).
#include <lz4.h>
