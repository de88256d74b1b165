/*
 * CMirrorBPF: the C side of traffic-mirror's BPF handling. It holds only what
 * Swift cannot express well: libbpf's option structs and macros, its
 * variadic print callback, constants that Debian's headers predate (tcx),
 * and the acquire/release accesses of the ring buffer protocol.
 *
 * Every function returns 0, a count or an fd on success and -errno on
 * failure; callers never read errno.
 */
#ifndef CMIRROR_BPF_H
#define CMIRROR_BPF_H

#include <stddef.h>
#include <stdint.h>
#include <linux/bpf.h>

#include "tm_abi.h"

struct bpf_object;

/* ---- libbpf facts ---- */

/* "1.1" etc. */
const char *CMirrorBPF_libbpf_version(void);
/* Number of possible CPUs (what per-CPU maps are sized by), or -errno. */
int CMirrorBPF_num_possible_cpus(void);

/* libbpf's messages go into a buffer instead of stderr; take them after a
 * failed call to explain it (the verifier log among them). */
void CMirrorBPF_log_capture(int enable);
/* Copies and clears the captured text; returns its length. */
size_t CMirrorBPF_log_take(char *buf, size_t len);

/* ---- object ---- */

/* Opens an ELF object from memory (not loaded yet). */
int CMirrorBPF_object_open(const void *bytes, size_t len, const char *name,
			   struct bpf_object **out);
/* Before load: size every per-CPU ring (bytes, a power of two multiple of
 * the page size) and the outer ring array (one slot per possible CPU).
 * `template_fd` receives the inner-map template libbpf needs at load;
 * pass it to CMirrorBPF_object_load, which closes it (-1 on failure). */
int CMirrorBPF_object_configure(struct bpf_object *obj, uint32_t ring_bytes, uint32_t cpus, int *template_fd);
int CMirrorBPF_object_load(struct bpf_object *obj, int template_fd);
/* Sets a `const volatile` global of .rodata by name, before load. */
int CMirrorBPF_object_set_rodata(struct bpf_object *obj, const char *name, const void *value, size_t size);
void CMirrorBPF_object_close(struct bpf_object *obj);
int CMirrorBPF_object_map_fd(struct bpf_object *obj, const char *name);
int CMirrorBPF_object_prog_fd(struct bpf_object *obj, const char *name);

/* The tm_control entry (its owner) of the object that program `prog_id`
 * belongs to; -ENOENT when it has none. */
int CMirrorBPF_prog_control(uint32_t prog_id, struct tm_control *control);

/* ---- maps ---- */

int CMirrorBPF_map_update(int fd, const void *key, const void *value, uint64_t flags);
int CMirrorBPF_map_lookup(int fd, const void *key, void *value);
int CMirrorBPF_map_delete(int fd, const void *key);
int CMirrorBPF_map_next_key(int fd, const void *key, void *next);
/* Creates a BPF_MAP_TYPE_RINGBUF of `bytes` whose memory lives on NUMA
 * node `node` (-1: wherever the kernel allocates); returns its fd. */
int CMirrorBPF_ringbuf_create(const char *name, uint32_t bytes, int node);
/* Creates and fills the classifier tables of one scope (tm_abi.h): the
 * value-class array (TM_CLASS_ELEMENTS elements), the address bounds
 * (`bound_count`) and the bitmaps (`class_count`). On success returns 0 with
 * the three fds in `fds`; else -errno, none open. */
int CMirrorBPF_scope_tables_create(const uint64_t *classes, const struct tm_addr_bound *bounds,
				   uint32_t bound_count, const struct tm_bits *bits,
				   uint32_t class_count, int fds[3]);

/* ---- programs ---- */

/* Name (at most 15 characters + NUL) and type of a loaded program by id. */
int CMirrorBPF_prog_info_by_id(uint32_t id, char name[16], uint32_t *type);
/* Runs a program once on `data` (BPF_PROG_TEST_RUN). For tc programs `ctx`
 * may carry a struct __sk_buff (mark, ifindex, ...). */
int CMirrorBPF_prog_test_run(int prog_fd, const void *data, uint32_t len,
			     void *ctx, uint32_t ctx_len, uint32_t repeat,
			     uint32_t *retval, uint32_t *duration_ns);

/* Runs an XDP program on `data` with BPF_F_TEST_XDP_LIVE_FRAMES: what it
 * redirects is really sent. `repeat` frames, in batches of `batch`. */
int CMirrorBPF_prog_run_live(int prog_fd, const void *data, uint32_t len, uint32_t repeat,
			     uint32_t batch, uint32_t *duration_ns);

/* ---- attachments ---- */

/* XDP through a bpf_link: detaches when the last fd closes, so a killed
 * agent leaves nothing behind. `flags` are XDP_FLAGS_* (0: driver mode if
 * the driver has it, else generic). Returns the link fd. */
int CMirrorBPF_xdp_link(int prog_fd, int ifindex, uint32_t flags);
/* The XDP program on an interface (any mode), 0 when none. */
int CMirrorBPF_xdp_query(int ifindex, uint32_t *prog_id);

/* tc through a tcx link (Linux 6.6+), appended after any program already
 * there. Returns the link fd; -EINVAL on kernels without tcx. */
int CMirrorBPF_tcx_link(int prog_fd, int ifindex, int egress);
/* Programs attached through tcx on an interface and direction (up to
 * `max` ids); returns their number. */
int CMirrorBPF_tcx_query(int ifindex, int egress, uint32_t *prog_ids, uint32_t max);

/* Legacy tc (clsact + a direct-action cls_bpf filter) for kernels without
 * tcx. A filter outlives its creator, so ours use a fixed handle and
 * priority that `query` and `detach` find again after a crash. */
#define CMIRRORBPF_TC_HANDLE 0x746d
#define CMIRRORBPF_TC_PRIORITY 0xC000
int CMirrorBPF_tc_attach(int prog_fd, int ifindex, int egress);
int CMirrorBPF_tc_detach(int ifindex, int egress);
/* The program id in our handle/priority slot, 0 when empty. */
int CMirrorBPF_tc_query(int ifindex, int egress, uint32_t *prog_id);

/* ---- ring buffers ---- */

/* A BPF ring buffer mapped for consuming: the consumer position page
 * (writable), the producer position page and the data area mapped twice
 * back to back, so a record never wraps. */
struct CMirrorBPF_ring {
	uint64_t *consumer_pos;
	const uint64_t *producer_pos;
	const uint8_t *data;
	uint64_t mask;
	size_t data_size;
	size_t page_size;
};
int CMirrorBPF_ring_map(int fd, uint32_t bytes, struct CMirrorBPF_ring *ring);
void CMirrorBPF_ring_unmap(struct CMirrorBPF_ring *ring);

/* Record header bits of the kernel's ring protocol. */
#define CMIRRORBPF_RING_BUSY_BIT (1U << 31)
#define CMIRRORBPF_RING_DISCARD_BIT (1U << 30)
#define CMIRRORBPF_RING_HDR_SIZE 8

static inline uint64_t CMirrorBPF_load_acquire_u64(const uint64_t *p)
{
	return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

static inline uint32_t CMirrorBPF_load_acquire_u32(const void *p)
{
	return __atomic_load_n((const uint32_t *)p, __ATOMIC_ACQUIRE);
}

static inline void CMirrorBPF_store_release_u64(uint64_t *p, uint64_t v)
{
	__atomic_store_n(p, v, __ATOMIC_RELEASE);
}

/* ---- outcome names (the X-lists of tm_abi.h) ---- */

const char *CMirrorBPF_if_outcome_label(uint32_t outcome);
const char *CMirrorBPF_session_outcome_label(uint32_t outcome);

#endif /* CMIRROR_BPF_H */
