// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Preloaded into the agent by FaultsEndToEndTests: socket(AF_INET6, ...)
 * fails with EAFNOSUPPORT, as on a host booted with ipv6.disable=1, which
 * this test bed cannot be. Everything else goes to libc.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <sys/socket.h>

int socket(int domain, int type, int protocol)
{
	static int (*real)(int, int, int);

	if (domain == AF_INET6) {
		errno = EAFNOSUPPORT;
		return -1;
	}
	if (!real)
		real = (int (*)(int, int, int))dlsym(RTLD_NEXT, "socket");
	return real(domain, type, protocol);
}
