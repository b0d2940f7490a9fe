// Debian libssl-dev: libcrypto, for SHA-256 of kernel images.
#include <openssl/sha.h>
