/* Debian's LLVM libunwind (libunwind-14-dev), the unwinder Rust's musl std links, was built
 * against glibc with _FORTIFY_SOURCE: its error paths call glibc's __fprintf_chk, which musl
 * lacks. This forwards it to vfprintf (the flag asks only for glibc's format checks). */
#include <stdarg.h>
#include <stdio.h>

int __fprintf_chk(FILE *stream, int flag, const char *format, ...)
{
	va_list args;
	int written;
	(void)flag;
	va_start(args, format);
	written = vfprintf(stream, format, args);
	va_end(args);
	return written;
}
