// Debian libbz2-dev (no pkg-config file): bzip2 streams.
#include <bzlib.h>
