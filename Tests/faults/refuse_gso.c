// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Fault injection for tests: an LD_PRELOAD library whose sendmmsg(2)
 * refuses UDP GSO messages on packet sockets (a virtio_net_hdr with a GSO
 * type in the first iovec) with EIO, as a kernel or device that cannot
 * segment them would, for the first TM_REFUSE_GSO of them. Messages before
 * the refused one go to the real sendmmsg, as the kernel returns a partial
 * count. Each refusal appends a line to TM_REFUSE_GSO_LOG.
 * No kernel here refuses a well-formed UDP GSO message, so this is the only
 * way to reach the agent's fallback.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/virtio_net.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

static int refused;

static int is_gso(const struct mmsghdr *m)
{
	const struct msghdr *h = &m->msg_hdr;

	if (h->msg_iovlen < 1 || h->msg_iov[0].iov_len != sizeof(struct virtio_net_hdr))
		return 0;
	return ((const struct virtio_net_hdr *)h->msg_iov[0].iov_base)->gso_type != VIRTIO_NET_HDR_GSO_NONE;
}

int sendmmsg(int fd, struct mmsghdr *msgs, unsigned int count, int flags)
{
	static int (*real)(int, struct mmsghdr *, unsigned int, int);
	const char *limit = getenv("TM_REFUSE_GSO");
	unsigned int i;

	if (!real)
		real = (int (*)(int, struct mmsghdr *, unsigned int, int))dlsym(RTLD_NEXT, "sendmmsg");
	if (!limit || refused >= atoi(limit))
		return real(fd, msgs, count, flags);
	for (i = 0; i < count && !is_gso(&msgs[i]); i++)
		;
	if (i > 0)
		return real(fd, msgs, i, flags);
	if (i == count)
		return real(fd, msgs, count, flags);
	refused++;
	const char *log = getenv("TM_REFUSE_GSO_LOG");
	if (log) {
		int l = open(log, O_WRONLY | O_APPEND | O_CREAT, 0600);
		if (l >= 0) {
			(void)!write(l, "refused\n", 8);
			close(l);
		}
	}
	errno = EIO;
	return -1;
}
