// Debian liblzo2-dev: LZO1X block decompression (the kernel's lzo payload is lzop's file format).
#include <lzo/lzo1x.h>

// lzo_init() is a macro (it passes the caller's type sizes to the library to check): a function
// Swift can call.
static inline int swiftkvm_lzo_init(void) { return lzo_init(); }
