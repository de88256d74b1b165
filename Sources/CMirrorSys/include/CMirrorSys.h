/*
 * CMirrorSys: the system calls Swift's Glibc module hides (they need
 * _GNU_SOURCE) or that are clearer as one small C call. Every function
 * returns 0, a count or an fd on success and -errno on failure.
 */
#ifndef CMIRROR_SYS_H
#define CMIRROR_SYS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <netinet/in.h>
#include <linux/if_packet.h> /* struct sockaddr_ll */

/* struct mmsghdr as the kernel has it; glibc declares it only under
 * _GNU_SOURCE. */
struct CMirrorSys_mmsghdr {
	struct msghdr msg_hdr;
	unsigned int msg_len;
};

int CMirrorSys_sendmsg(int fd, const struct msghdr *msg, int flags);
int CMirrorSys_sendmmsg(int fd, struct CMirrorSys_mmsghdr *msgs, unsigned int count, int flags);
int CMirrorSys_recvmmsg(int fd, struct CMirrorSys_mmsghdr *msgs, unsigned int count, int flags,
			int timeout_ms);

int CMirrorSys_socket(int domain, int type, int protocol);
int CMirrorSys_setsockopt_int(int fd, int level, int name, int value);
int CMirrorSys_getsockopt_int(int fd, int level, int name, int *value);
/* The socket's cookie (SO_COOKIE), what bpf_get_socket_cookie returns. */
int CMirrorSys_socket_cookie(int fd, uint64_t *cookie);
/* Lets only ICMP/ICMPv6 echo replies with `identifier` reach a raw socket
 * (a classic BPF socket filter). */
int CMirrorSys_attach_echo_filter(int fd, int v6, uint16_t identifier);
int CMirrorSys_bind(int fd, const struct sockaddr *addr, socklen_t len);
int CMirrorSys_connect(int fd, const struct sockaddr *addr, socklen_t len);
int CMirrorSys_getsockname(int fd, struct sockaddr *addr, socklen_t *len);
int CMirrorSys_close(int fd);
/* Waits up to timeout_ms for `events` (POLLIN/POLLOUT) on fd; 0 on timeout. */
int CMirrorSys_poll1(int fd, short events, int timeout_ms);

/* epoll: create, add fd for reading (data = tag), wait returning tags. */
int CMirrorSys_epoll_create(void);
int CMirrorSys_epoll_add(int epfd, int fd, uint32_t tag);
int CMirrorSys_epoll_wait(int epfd, uint32_t *tags, int max, uint64_t timeout_ns);
/* An eventfd to wake an epoll wait from another thread. */
int CMirrorSys_eventfd(void);
int CMirrorSys_eventfd_signal(int fd);
int CMirrorSys_eventfd_drain(int fd);

/* A NETLINK_ROUTE socket subscribed to link changes (RTMGRP_LINK:
 * RTM_NEWLINK, RTM_DELLINK, renames and namespace moves), non-blocking. */
int CMirrorSys_link_events_open(void);
/* Reads every pending message; returns how many link messages arrived, 1
 * more when the socket overran (ENOBUFS: events were lost, so the caller
 * must look at every link again), 0 when none. */
int CMirrorSys_link_events_drain(int fd);

/* A NETLINK_ROUTE socket subscribed to what a path toward a target
 * depends on: routes and addresses of both families, and links (an MTU
 * change), non-blocking. */
int CMirrorSys_route_events_open(void);
/* Reads every pending message; returns how many arrived (1 more when the
 * socket overran), 0 when none. */
int CMirrorSys_netlink_drain(int fd);

/* A raw ICMP (v6 = 0) or ICMPv6 (v6 = 1) socket that takes only error
 * messages, non-blocking; -errno when it cannot be had. */
int CMirrorSys_icmp_errors_open(int v6);
/* Reads one message: when it is an error about a UDP or GRE packet, the
 * quoted destination goes to `dst` (4 or 16 bytes, the return value), its
 * UDP port to `port` (0 for GRE), and the ICMP type and code; 0 for any
 * other message; -1 when nothing is pending. */
int CMirrorSys_icmp_error_read(int fd, int v6, uint8_t *dst, uint16_t *port, uint8_t *type, uint8_t *code,
			       uint32_t *mtu);

/* Joins the calling thread to the network namespace of `fd` (a file of
 * /run/netns or /proc/PID/ns/net). */
int CMirrorSys_setns_net(int fd);
int CMirrorSys_open_readonly(const char *path);
/* The cookie of the calling thread's network namespace (SO_NETNS_COOKIE):
 * the net_cookie the hooks read from the devices of that namespace. */
int CMirrorSys_netns_cookie(uint64_t *cookie);
/* The inode number of the file at `path` (stat(2)). */
int CMirrorSys_file_inode(const char *path, uint64_t *inode);

int CMirrorSys_if_nametoindex(const char *name);
int CMirrorSys_if_indextoname(int ifindex, char name[16]);
/* Interface MTU and hardware address by name, through SIOCGIF* ioctls. */
int CMirrorSys_if_mtu(const char *name);
int CMirrorSys_if_hwaddr(const char *name, uint8_t mac[6]);

/* The route toward `dst` (4 or 16 bytes, by family), looked up as a
 * socket with `mark` would (0: none): output interface, next hop when it is
 * a gateway, route type (RTN_*). */
int CMirrorSys_route_get(int family, const uint8_t *dst, uint32_t mark, int *oif, uint8_t *gateway,
			 int *has_gateway, int *type);
/* The neighbour entry of `addr` on `ifindex`: link-layer address and NUD
 * state; -ENOENT when there is none or it has no address yet. */
int CMirrorSys_neigh_get(int ifindex, int family, const uint8_t *addr, uint8_t mac[6], uint16_t *state);
/* Tells the kernel an existing neighbour entry is in use (NTF_USE), as
 * traffic through the IP stack would: it is confirmed when stale. It does
 * not create one (-ENOENT): the first copies, sent through the stack,
 * resolve the neighbour with the right source address. */
int CMirrorSys_neigh_use(int ifindex, int family, const uint8_t *addr);
/* Hardware type (ARPHRD_*) and address of an interface by index. */
int CMirrorSys_if_hwaddr_index(int ifindex, uint8_t mac[6]);

/* An AF_PACKET socket that sends whole frames on `ifindex`, each behind a
 * struct CMirrorSys_vnet_hdr (PACKET_VNET_HDR); protocol 0: it never
 * receives. */
int CMirrorSys_packet_socket(int ifindex);

/* struct virtio_net_hdr as PACKET_VNET_HDR takes it (native byte order). */
struct CMirrorSys_vnet_hdr {
	uint8_t flags;      /* VIRTIO_NET_HDR_F_NEEDS_CSUM = 1 */
	uint8_t gso_type;   /* VIRTIO_NET_HDR_GSO_NONE = 0, _UDP_L4 = 5 */
	uint16_t hdr_len;   /* bytes of headers every segment repeats */
	uint16_t gso_size;  /* payload bytes per segment */
	uint16_t csum_start;
	uint16_t csum_offset;
};

/* Resolves a host name or literal (AF_UNSPEC; IPv4 first when both). */
int CMirrorSys_resolve(const char *host, struct sockaddr_storage *out, socklen_t *len);

/* Pins the calling thread to one CPU; -1 lets it run on all again. */
int CMirrorSys_pin_thread(int cpu);
/* Narrows the calling thread's CPUs to those of `cpus` it may already run
 * on; where none of them is allowed it stays as it was. Returns how many
 * CPUs it runs on now, or -errno. */
int CMirrorSys_narrow_thread(const int32_t *cpus, int count);
/* The CPU the calling thread runs on (sched_getcpu). */
int CMirrorSys_current_cpu(void);
/* Number of CPUs online. */
int CMirrorSys_cpu_count(void);

/* SIGINT, SIGTERM and SIGHUP set a flag (and SIGPIPE is ignored) for
 * programs that poll `CMirrorSys_stop_requested` in their loop. */
void CMirrorSys_trap_stop_signals(void);
int CMirrorSys_stop_requested(void);
/* Whether a SIGHUP came before the program trapped it itself (a handler
 * installed before main notes it); clears the note. */
int CMirrorSys_take_early_hangup(void);

/* Opens a file for writing (created, truncated), or -errno. */
int CMirrorSys_open_write(const char *path);
/* Writes all of buf; -errno on failure (EPIPE when the reader left). */
int CMirrorSys_write_all(int fd, const void *buf, size_t len);

/* Thread name of the calling thread (at most 15 characters). */
void CMirrorSys_set_thread_name(const char *name);
/* The calling thread's timer slack (how late its sleeps may end). */
int CMirrorSys_set_timer_slack(uint64_t nanoseconds);

/* Process facts for metrics: CPU seconds (user+system), open fds. */
double CMirrorSys_process_cpu_seconds(void);
int CMirrorSys_count_open_fds(void);

/* Monotonic and wall clocks in nanoseconds. */
uint64_t CMirrorSys_monotonic_ns(void);
uint64_t CMirrorSys_realtime_ns(void);



/* Single-writer counters read by other threads: relaxed 64-bit accesses
 * (no read-modify-write lock is needed with one writer). */
static inline uint64_t CMirrorSys_load_relaxed_u64(const uint64_t *p)
{
	return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static inline void CMirrorSys_store_relaxed_u64(uint64_t *p, uint64_t v)
{
	__atomic_store_n(p, v, __ATOMIC_RELAXED);
}

static inline void CMirrorSys_add_relaxed_u64(uint64_t *p, uint64_t v)
{
	__atomic_store_n(p, __atomic_load_n(p, __ATOMIC_RELAXED) + v, __ATOMIC_RELAXED);
}

/* The same for a counter more than one thread adds to. */
static inline void CMirrorSys_add_shared_u64(uint64_t *p, uint64_t v)
{
	__atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}

/* The old value of a 32-bit counter more than one thread adds to. */
static inline uint32_t CMirrorSys_fetch_add_shared_u32(uint32_t *p, uint32_t v)
{
	return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}

static inline uint32_t CMirrorSys_load_relaxed_u32(const uint32_t *p)
{
	return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static inline void CMirrorSys_store_relaxed_u32(uint32_t *p, uint32_t v)
{
	__atomic_store_n(p, v, __ATOMIC_RELAXED);
}

/* Pacing by the generic cell rate algorithm on one shared clock: *tat is
 * when the endpoint's schedule is next free (monotonic ns). Books `cost` ns
 * of it (datagrams x interval) and returns how long to wait before sending
 * so that no more than `depth` ns of schedule lie ahead: 0 when the send
 * conforms now. Safe for several forwarding threads at once. */
static inline uint64_t CMirrorSys_pace(uint64_t *tat, uint64_t now, uint64_t cost, uint64_t depth)
{
	uint64_t old = __atomic_load_n(tat, __ATOMIC_RELAXED), next;

	do {
		next = (old > now ? old : now) + cost;
	} while (!__atomic_compare_exchange_n(tat, &old, next, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
	return next > now + depth ? next - now - depth : 0;
}

/* Raises *tat to at least `floor` (a send that left later than booked
 * moves the schedule with it, so a late run and the next are never closer
 * than the schedule says). */
static inline void CMirrorSys_pace_floor(uint64_t *tat, uint64_t floor)
{
	uint64_t old = __atomic_load_n(tat, __ATOMIC_RELAXED);

	while (old < floor && !__atomic_compare_exchange_n(tat, &old, floor, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
		;
}

/* Sleeps until the monotonic clock reads `deadline` (ns). */
void CMirrorSys_sleep_until(uint64_t deadline);

#endif /* CMIRROR_SYS_H */
