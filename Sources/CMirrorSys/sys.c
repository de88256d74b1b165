#define _GNU_SOURCE
#include "CMirrorSys.h"

#include <dirent.h>
#include <linux/filter.h>
#include <linux/if_packet.h>
#include <linux/neighbour.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sched.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <netinet/icmp6.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

_Static_assert(sizeof(struct CMirrorSys_mmsghdr) == sizeof(struct mmsghdr),
	       "CMirrorSys_mmsghdr must match struct mmsghdr");

static int ret(int rc)
{
	return rc < 0 ? -errno : rc;
}

int CMirrorSys_sendmsg(int fd, const struct msghdr *msg, int flags)
{
	return ret((int)sendmsg(fd, msg, flags));
}

int CMirrorSys_sendmmsg(int fd, struct CMirrorSys_mmsghdr *msgs, unsigned int count, int flags)
{
	return ret(sendmmsg(fd, (struct mmsghdr *)msgs, count, flags));
}

int CMirrorSys_recvmmsg(int fd, struct CMirrorSys_mmsghdr *msgs, unsigned int count, int flags,
			int timeout_ms)
{
	if (timeout_ms >= 0) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		int n = poll(&p, 1, timeout_ms);

		if (n <= 0)
			return n < 0 ? -errno : -EAGAIN;
	}
	return ret(recvmmsg(fd, (struct mmsghdr *)msgs, count, flags | MSG_DONTWAIT, NULL));
}

int CMirrorSys_socket(int domain, int type, int protocol)
{
	return ret(socket(domain, type | SOCK_CLOEXEC, protocol));
}

int CMirrorSys_setsockopt_int(int fd, int level, int name, int value)
{
	return ret(setsockopt(fd, level, name, &value, sizeof(value)));
}

int CMirrorSys_getsockopt_int(int fd, int level, int name, int *value)
{
	socklen_t len = sizeof(*value);

	return ret(getsockopt(fd, level, name, value, &len));
}

#ifndef SO_COOKIE
#define SO_COOKIE 57
#endif

int CMirrorSys_socket_cookie(int fd, uint64_t *cookie)
{
	socklen_t len = sizeof(*cookie);

	return ret(getsockopt(fd, SOL_SOCKET, SO_COOKIE, cookie, &len));
}

int CMirrorSys_attach_echo_filter(int fd, int v6, uint16_t identifier)
{
	/* IPv4 raw sockets see the IP header first; ICMPv6 ones do not. */
	struct sock_filter v4code[] = {
		BPF_STMT(BPF_LDX | BPF_B | BPF_MSH, 0),            /* x = IP header length */
		BPF_STMT(BPF_LD | BPF_B | BPF_IND, 0),             /* ICMP type */
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, 3),      /* echo reply */
		BPF_STMT(BPF_LD | BPF_H | BPF_IND, 4),             /* identifier */
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, identifier, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, 0xffff),
		BPF_STMT(BPF_RET | BPF_K, 0),
	};
	struct sock_filter v6code[] = {
		BPF_STMT(BPF_LD | BPF_B | BPF_ABS, 0),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 129, 0, 3),
		BPF_STMT(BPF_LD | BPF_H | BPF_ABS, 4),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, identifier, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, 0xffff),
		BPF_STMT(BPF_RET | BPF_K, 0),
	};
	struct sock_fprog prog = {
		.len = v6 ? sizeof(v6code) / sizeof(v6code[0]) : sizeof(v4code) / sizeof(v4code[0]),
		.filter = v6 ? v6code : v4code,
	};

	return ret(setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof(prog)));
}

int CMirrorSys_bind(int fd, const struct sockaddr *addr, socklen_t len)
{
	return ret(bind(fd, addr, len));
}

int CMirrorSys_connect(int fd, const struct sockaddr *addr, socklen_t len)
{
	return ret(connect(fd, addr, len));
}

int CMirrorSys_getsockname(int fd, struct sockaddr *addr, socklen_t *len)
{
	return ret(getsockname(fd, addr, len));
}

int CMirrorSys_close(int fd)
{
	return ret(close(fd));
}

int CMirrorSys_poll1(int fd, short events, int timeout_ms)
{
	struct pollfd p = { .fd = fd, .events = events };

	return ret(poll(&p, 1, timeout_ms));
}

int CMirrorSys_epoll_create(void)
{
	return ret(epoll_create1(EPOLL_CLOEXEC));
}

int CMirrorSys_epoll_add(int epfd, int fd, uint32_t tag)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.u32 = tag };

	return ret(epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev));
}

int CMirrorSys_epoll_wait(int epfd, uint32_t *tags, int max, uint64_t timeout_ns)
{
	struct epoll_event evs[64];
	struct timespec ts = { .tv_sec = timeout_ns / 1000000000, .tv_nsec = timeout_ns % 1000000000 };
	int n, i;

	if (max > 64)
		max = 64;
	n = epoll_pwait2(epfd, evs, max, &ts, NULL);
	if (n < 0)
		return errno == EINTR ? 0 : -errno;
	for (i = 0; i < n; i++)
		tags[i] = evs[i].data.u32;
	return n;
}

int CMirrorSys_eventfd(void)
{
	return ret(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
}

int CMirrorSys_eventfd_signal(int fd)
{
	uint64_t one = 1;

	return ret((int)write(fd, &one, sizeof(one)));
}

int CMirrorSys_eventfd_drain(int fd)
{
	uint64_t v;

	return ret((int)read(fd, &v, sizeof(v)));
}

/* A non-blocking NETLINK_ROUTE socket subscribed to `groups`. */
static int netlink_events_open(unsigned groups)
{
	struct sockaddr_nl sa = { .nl_family = AF_NETLINK, .nl_groups = groups };
	int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, NETLINK_ROUTE);

	if (fd < 0)
		return -errno;
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int e = errno;

		close(fd);
		return -e;
	}
	return fd;
}

/* Reads every pending message; counts those `count` accepts (all when
 * NULL), and one more for an overrun. */
static int netlink_drain(int fd, int (*count)(const struct nlmsghdr *))
{
	char buf[16384] __attribute__((aligned(4)));
	int messages = 0;

	for (;;) {
		ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == ENOBUFS) {
				messages++;
				continue;
			}
			return messages;
		}
		if (n == 0)
			return messages;
		for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)n); h = NLMSG_NEXT(h, n))
			if (!count || count(h))
				messages++;
	}
}

static int is_link_message(const struct nlmsghdr *h)
{
	return h->nlmsg_type == RTM_NEWLINK || h->nlmsg_type == RTM_DELLINK;
}

int CMirrorSys_link_events_open(void)
{
	return netlink_events_open(RTMGRP_LINK);
}

int CMirrorSys_link_events_drain(int fd)
{
	return netlink_drain(fd, is_link_message);
}

int CMirrorSys_route_events_open(void)
{
	return netlink_events_open(RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR |
				   RTMGRP_LINK);
}

int CMirrorSys_netlink_drain(int fd)
{
	return netlink_drain(fd, NULL);
}

int CMirrorSys_icmp_errors_open(int v6)
{
	int fd = socket(v6 ? AF_INET6 : AF_INET, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK,
			v6 ? IPPROTO_ICMPV6 : IPPROTO_ICMP);

	if (fd < 0)
		return -errno;
	if (v6) {
		/* Only the errors: destination unreachable, packet too big,
		 * time exceeded, parameter problem. */
		struct icmp6_filter f;

		ICMP6_FILTER_SETBLOCKALL(&f);
		for (int t = 1; t <= 4; t++)
			ICMP6_FILTER_SETPASS(t, &f);
		setsockopt(fd, IPPROTO_ICMPV6, ICMP6_FILTER, &f, sizeof(f));
	} else {
		/* Only destination unreachable (3) and time exceeded (11). */
		uint32_t mask = ~((1u << 3) | (1u << 11));

		setsockopt(fd, SOL_RAW, 1 /* ICMP_FILTER */, &mask, sizeof(mask));
	}
	return fd;
}

int CMirrorSys_icmp_error_read(int fd, int v6, uint8_t *dst, uint16_t *port, uint8_t *type, uint8_t *code,
			       uint32_t *mtu)
{
	uint8_t buf[1500];
	ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
	const uint8_t *icmp, *end = buf + (n > 0 ? n : 0);

	if (n < 0)
		return errno == EINTR ? 0 : -1;
	if (v6) {
		/* The kernel hands ICMPv6 without the IPv6 header. */
		icmp = buf;
		if (end - icmp < 8 + 40 || icmp[8] >> 4 != 6)
			return 0;
		const uint8_t *ip = icmp + 8, *l4 = ip + 40;

		*type = icmp[0];
		*code = icmp[1];
		/* Packet too big: the MTU in the second word. */
		*mtu = icmp[0] == 2 ? (uint32_t)icmp[4] << 24 | icmp[5] << 16 | icmp[6] << 8 | icmp[7] : 0;
		memcpy(dst, ip + 24, 16);
		*port = (ip[6] == IPPROTO_UDP && end - l4 >= 4) ? (uint16_t)(l4[2] << 8 | l4[3]) : 0;
		return ip[6] == IPPROTO_UDP || ip[6] == 47 ? 16 : 0;
	}
	if (n < 20 || (buf[0] >> 4) != 4)
		return 0;
	icmp = buf + (buf[0] & 0xF) * 4;
	if (end - icmp < 8 + 20 || icmp[8] >> 4 != 4)
		return 0;
	const uint8_t *ip = icmp + 8, *l4 = ip + (ip[0] & 0xF) * 4;

	*type = icmp[0];
	*code = icmp[1];
	/* Fragmentation needed: the next hop's MTU (RFC 1191). */
	*mtu = icmp[0] == 3 && icmp[1] == 4 ? (uint32_t)(icmp[6] << 8 | icmp[7]) : 0;
	memcpy(dst, ip + 16, 4);
	*port = (ip[9] == IPPROTO_UDP && end - l4 >= 4) ? (uint16_t)(l4[2] << 8 | l4[3]) : 0;
	return ip[9] == IPPROTO_UDP || ip[9] == 47 ? 4 : 0;
}

int CMirrorSys_setns_net(int fd)
{
	return ret(setns(fd, CLONE_NEWNET));
}

int CMirrorSys_open_readonly(const char *path)
{
	return ret(open(path, O_RDONLY | O_CLOEXEC));
}

#ifndef SO_NETNS_COOKIE
#define SO_NETNS_COOKIE 71
#endif

int CMirrorSys_netns_cookie(uint64_t *cookie)
{
	socklen_t len = sizeof(*cookie);
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), rc;

	if (fd < 0)
		fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	rc = getsockopt(fd, SOL_SOCKET, SO_NETNS_COOKIE, cookie, &len);
	rc = rc < 0 ? -errno : 0;
	close(fd);
	return rc;
}

int CMirrorSys_file_inode(const char *path, uint64_t *inode)
{
	struct stat st;

	if (stat(path, &st) < 0)
		return -errno;
	*inode = st.st_ino;
	return 0;
}

int CMirrorSys_if_nametoindex(const char *name)
{
	unsigned int idx = if_nametoindex(name);

	return idx ? (int)idx : -errno;
}

int CMirrorSys_if_indextoname(int ifindex, char name[16])
{
	return if_indextoname((unsigned int)ifindex, name) ? 0 : -errno;
}

static int if_ioctl(const char *name, unsigned long req, struct ifreq *ifr)
{
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), rc;

	if (fd < 0)
		return -errno;
	memset(ifr, 0, sizeof(*ifr));
	strncpy(ifr->ifr_name, name, IFNAMSIZ - 1);
	rc = ioctl(fd, req, ifr);
	rc = rc < 0 ? -errno : 0;
	close(fd);
	return rc;
}

int CMirrorSys_if_mtu(const char *name)
{
	struct ifreq ifr;
	int rc = if_ioctl(name, SIOCGIFMTU, &ifr);

	return rc < 0 ? rc : ifr.ifr_mtu;
}

int CMirrorSys_if_hwaddr(const char *name, uint8_t mac[6])
{
	struct ifreq ifr;
	int rc = if_ioctl(name, SIOCGIFHWADDR, &ifr);

	if (rc < 0)
		return rc;
	memcpy(mac, ifr.ifr_hwaddr.sa_data, 6);
	return ifr.ifr_hwaddr.sa_family;
}

int CMirrorSys_resolve(const char *host, struct sockaddr_storage *out, socklen_t *len)
{
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_DGRAM };
	struct addrinfo *res, *ai, *pick = NULL;
	int rc = getaddrinfo(host, NULL, &hints, &res);

	if (rc != 0)
		return rc == EAI_SYSTEM ? -errno : -ENOENT;
	for (ai = res; ai; ai = ai->ai_next) {
		if (ai->ai_family == AF_INET) {
			pick = ai;
			break;
		}
		if (!pick && ai->ai_family == AF_INET6)
			pick = ai;
	}
	if (!pick) {
		freeaddrinfo(res);
		return -EAFNOSUPPORT;
	}
	memcpy(out, pick->ai_addr, pick->ai_addrlen);
	*len = pick->ai_addrlen;
	freeaddrinfo(res);
	return 0;
}

int CMirrorSys_pin_thread(int cpu)
{
	cpu_set_t set;

	CPU_ZERO(&set);
	if (cpu >= 0) {
		CPU_SET(cpu, &set);
	} else {
		long n = sysconf(_SC_NPROCESSORS_CONF);

		for (long i = 0; i < n && i < CPU_SETSIZE; i++)
			CPU_SET(i, &set);
	}
	return -pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

int CMirrorSys_narrow_thread(const int32_t *cpus, int count)
{
	cpu_set_t now, want;
	int err = pthread_getaffinity_np(pthread_self(), sizeof(now), &now);

	if (err)
		return -err;
	CPU_ZERO(&want);
	for (int i = 0; i < count; i++)
		if (cpus[i] >= 0 && cpus[i] < CPU_SETSIZE && CPU_ISSET(cpus[i], &now))
			CPU_SET(cpus[i], &want);
	if (CPU_COUNT(&want) == 0)
		return CPU_COUNT(&now);
	err = pthread_setaffinity_np(pthread_self(), sizeof(want), &want);
	return err ? -err : CPU_COUNT(&want);
}

int CMirrorSys_current_cpu(void)
{
	return sched_getcpu();
}

int CMirrorSys_cpu_count(void)
{
	return (int)sysconf(_SC_NPROCESSORS_ONLN);
}

void CMirrorSys_set_thread_name(const char *name)
{
	char buf[16];

	strncpy(buf, name, sizeof(buf) - 1);
	buf[15] = 0;
	pthread_setname_np(pthread_self(), buf);
}

int CMirrorSys_set_timer_slack(uint64_t nanoseconds)
{
	return ret(prctl(PR_SET_TIMERSLACK, (unsigned long)nanoseconds, 0, 0, 0));
}

double CMirrorSys_process_cpu_seconds(void)
{
	struct rusage ru;

	if (getrusage(RUSAGE_SELF, &ru) != 0)
		return 0;
	return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
	       ru.ru_stime.tv_usec / 1e6;
}

int CMirrorSys_count_open_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0;

	if (!d)
		return -errno;
	while ((e = readdir(d)))
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n - 1; /* the directory's own fd */
}

uint64_t CMirrorSys_monotonic_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

void CMirrorSys_sleep_until(uint64_t deadline)
{
	struct timespec ts = { .tv_sec = deadline / 1000000000ull, .tv_nsec = deadline % 1000000000ull };

	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
		;
}

uint64_t CMirrorSys_realtime_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static volatile sig_atomic_t stop_flag;

static void on_stop(int sig)
{
	(void)sig;
	stop_flag = 1;
}

void CMirrorSys_trap_stop_signals(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_stop;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
}

static volatile sig_atomic_t early_hangup;

static void note_hangup(int sig)
{
	(void)sig;
	early_hangup = 1;
}

/* Before main: SIGHUP's default action ends the process, and `run` traps it
 * only once Swift's runtime and the argument parser are up. A SIGHUP that
 * comes earlier (a reload asked for right after start) is noted here, to be
 * carried out once the agent runs. */
__attribute__((constructor)) static void catch_early_hangup(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = note_hangup;
	sigaction(SIGHUP, &sa, NULL);
}

int CMirrorSys_take_early_hangup(void)
{
	int v = early_hangup;

	early_hangup = 0;
	return v;
}

int CMirrorSys_stop_requested(void)
{
	return stop_flag;
}

int CMirrorSys_open_write(const char *path)
{
	return ret(open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
}

int CMirrorSys_write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;

	while (len > 0) {
		ssize_t n = write(fd, p, len);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* ---- netlink: routes and neighbours ---- */

struct nl_request {
	struct nlmsghdr nh;
	union {
		struct rtmsg rt;
		struct ndmsg nd;
	};
	char attrs[64];
};

static void nl_attr(struct nl_request *r, unsigned short type, const void *data, size_t len)
{
	struct rtattr *a = (struct rtattr *)((char *)r + NLMSG_ALIGN(r->nh.nlmsg_len));

	a->rta_type = type;
	a->rta_len = RTA_LENGTH(len);
	memcpy(RTA_DATA(a), data, len);
	r->nh.nlmsg_len = NLMSG_ALIGN(r->nh.nlmsg_len) + RTA_ALIGN(a->rta_len);
}

/* Sends one request and reads its answer into buf; returns the answer's
 * length, or -errno (from NLMSG_ERROR as well). */
static int nl_transact(struct nl_request *r, char *buf, size_t size)
{
	struct sockaddr_nl kernel = { .nl_family = AF_NETLINK };
	int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE), n;
	struct timeval tv = { .tv_sec = 1 };
	struct nlmsghdr *h;

	if (fd < 0)
		return -errno;
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	r->nh.nlmsg_seq = 1;
	if (sendto(fd, r, r->nh.nlmsg_len, 0, (struct sockaddr *)&kernel, sizeof(kernel)) < 0) {
		n = -errno;
		close(fd);
		return n;
	}
	n = (int)recv(fd, buf, size, 0);
	if (n < 0)
		n = -errno;
	close(fd);
	if (n < (int)sizeof(*h))
		return n < 0 ? n : -EIO;
	h = (struct nlmsghdr *)buf;
	if (h->nlmsg_type == NLMSG_ERROR) {
		struct nlmsgerr *e = NLMSG_DATA(h);

		return e->error ? e->error : 0;
	}
	return n;
}

int CMirrorSys_route_get(int family, const uint8_t *dst, uint32_t mark, int *oif, uint8_t *gateway,
			 int *has_gateway, int *type)
{
	struct nl_request r;
	char buf[4096];
	size_t alen = family == AF_INET ? 4 : 16;
	struct nlmsghdr *h = (struct nlmsghdr *)buf;
	struct rtmsg *rt;
	struct rtattr *a;
	int n, len;

	memset(&r, 0, sizeof(r));
	r.nh.nlmsg_len = NLMSG_LENGTH(sizeof(struct rtmsg));
	r.nh.nlmsg_type = RTM_GETROUTE;
	r.nh.nlmsg_flags = NLM_F_REQUEST;
	r.rt.rtm_family = family;
	r.rt.rtm_dst_len = alen * 8;
	nl_attr(&r, RTA_DST, dst, alen);
	if (mark)
		nl_attr(&r, RTA_MARK, &mark, sizeof(mark));
	n = nl_transact(&r, buf, sizeof(buf));
	if (n <= 0)
		return n < 0 ? n : -EIO;
	if (h->nlmsg_type != RTM_NEWROUTE)
		return -EIO;
	rt = NLMSG_DATA(h);
	*oif = 0;
	*has_gateway = 0;
	*type = rt->rtm_type;
	len = RTM_PAYLOAD(h);
	for (a = RTM_RTA(rt); RTA_OK(a, len); a = RTA_NEXT(a, len)) {
		if (a->rta_type == RTA_OIF && RTA_PAYLOAD(a) >= 4)
			memcpy(oif, RTA_DATA(a), 4);
		else if (a->rta_type == RTA_GATEWAY && RTA_PAYLOAD(a) == alen) {
			memcpy(gateway, RTA_DATA(a), alen);
			*has_gateway = 1;
		}
	}
	return *oif ? 0 : -ENETUNREACH;
}

int CMirrorSys_neigh_get(int ifindex, int family, const uint8_t *addr, uint8_t mac[6], uint16_t *state)
{
	struct nl_request r;
	char buf[4096];
	size_t alen = family == AF_INET ? 4 : 16;
	struct nlmsghdr *h = (struct nlmsghdr *)buf;
	struct ndmsg *nd;
	struct rtattr *a;
	int n, len, found = 0;

	memset(&r, 0, sizeof(r));
	r.nh.nlmsg_len = NLMSG_LENGTH(sizeof(struct ndmsg));
	r.nh.nlmsg_type = RTM_GETNEIGH;
	r.nh.nlmsg_flags = NLM_F_REQUEST;
	r.nd.ndm_family = family;
	r.nd.ndm_ifindex = ifindex;
	nl_attr(&r, NDA_DST, addr, alen);
	n = nl_transact(&r, buf, sizeof(buf));
	if (n <= 0)
		return n < 0 ? n : -EIO;
	if (h->nlmsg_type != RTM_NEWNEIGH)
		return -EIO;
	nd = NLMSG_DATA(h);
	*state = nd->ndm_state;
	len = (int)h->nlmsg_len - NLMSG_LENGTH(sizeof(*nd));
	for (a = (struct rtattr *)((char *)nd + NLMSG_ALIGN(sizeof(*nd))); RTA_OK(a, len); a = RTA_NEXT(a, len)) {
		if (a->rta_type == NDA_LLADDR && RTA_PAYLOAD(a) == 6) {
			memcpy(mac, RTA_DATA(a), 6);
			found = 1;
		}
	}
	return found ? 0 : -ENOENT;
}

int CMirrorSys_neigh_use(int ifindex, int family, const uint8_t *addr)
{
	struct nl_request r;
	char buf[1024];
	size_t alen = family == AF_INET ? 4 : 16;
	int n;

	memset(&r, 0, sizeof(r));
	r.nh.nlmsg_len = NLMSG_LENGTH(sizeof(struct ndmsg));
	r.nh.nlmsg_type = RTM_NEWNEIGH;
	r.nh.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
	r.nd.ndm_family = family;
	r.nd.ndm_ifindex = ifindex;
	r.nd.ndm_flags = NTF_USE;
	r.nd.ndm_state = NUD_NONE;
	nl_attr(&r, NDA_DST, addr, alen);
	n = nl_transact(&r, buf, sizeof(buf));
	return n < 0 ? n : 0;
}

/* ---- AF_PACKET sending ---- */

int CMirrorSys_packet_socket(int ifindex)
{
	struct sockaddr_ll sll;
	int fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0), one = 1;

	if (fd < 0)
		return -errno;
	memset(&sll, 0, sizeof(sll));
	sll.sll_family = AF_PACKET;
	sll.sll_ifindex = ifindex;
	if (bind(fd, (struct sockaddr *)&sll, sizeof(sll)) < 0 ||
	    setsockopt(fd, SOL_PACKET, PACKET_VNET_HDR, &one, sizeof(one)) < 0) {
		int err = -errno;

		close(fd);
		return err;
	}
	return fd;
}

int CMirrorSys_if_hwaddr_index(int ifindex, uint8_t mac[6])
{
	char name[IF_NAMESIZE];

	if (!if_indextoname(ifindex, name))
		return -errno;
	return CMirrorSys_if_hwaddr(name, mac);
}
