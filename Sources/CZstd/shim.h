// Debian libzstd-dev: zstd frames.
#include <zstd.h>
#include <zstd_errors.h>
