// Debian zlib1g-dev: inflate for gzip.
#include <zlib.h>
