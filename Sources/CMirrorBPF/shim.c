#define _GNU_SOURCE
#include "CMirrorBPF.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>

/* Debian 12's linux/bpf.h (6.1) predates tcx; the values are the kernel's
 * enum bpf_attach_type, stable ABI since 6.6. */
#define TM_BPF_TCX_INGRESS 46
#define TM_BPF_TCX_EGRESS 47

static int neg_errno(int rc)
{
	if (rc >= 0)
		return rc;
	/* libbpf returns -errno; raw syscall wrappers return -1 and set errno. */
	return rc == -1 && errno ? -errno : rc;
}

const char *CMirrorBPF_libbpf_version(void)
{
	return libbpf_version_string();
}

int CMirrorBPF_num_possible_cpus(void)
{
	return libbpf_num_possible_cpus();
}

/* ---- log capture ---- */

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static char log_buf[64 * 1024];
static size_t log_len;
static int log_enabled;

static int capture_print(enum libbpf_print_level level, const char *fmt, va_list args)
{
	if (level == LIBBPF_DEBUG)
		return 0;
	pthread_mutex_lock(&log_lock);
	if (log_enabled && log_len < sizeof(log_buf) - 1) {
		int n = vsnprintf(log_buf + log_len, sizeof(log_buf) - log_len, fmt, args);
		if (n > 0)
			log_len += (size_t)n < sizeof(log_buf) - log_len ? (size_t)n
									 : sizeof(log_buf) - log_len - 1;
	}
	pthread_mutex_unlock(&log_lock);
	return 0;
}

void CMirrorBPF_log_capture(int enable)
{
	pthread_mutex_lock(&log_lock);
	log_enabled = enable;
	log_len = 0;
	pthread_mutex_unlock(&log_lock);
	libbpf_set_print(capture_print);
}

size_t CMirrorBPF_log_take(char *buf, size_t len)
{
	size_t n;

	pthread_mutex_lock(&log_lock);
	n = log_len < len - 1 ? log_len : len - 1;
	memcpy(buf, log_buf, n);
	buf[n] = 0;
	log_len = 0;
	pthread_mutex_unlock(&log_lock);
	return n;
}

/* ---- object ---- */

int CMirrorBPF_object_open(const void *bytes, size_t len, const char *name,
			   struct bpf_object **out)
{
	LIBBPF_OPTS(bpf_object_open_opts, opts, .object_name = name);
	struct bpf_object *obj = bpf_object__open_mem(bytes, len, &opts);
	long err = libbpf_get_error(obj);

	if (err)
		return (int)err;
	*out = obj;
	return 0;
}

/* Writes a `const volatile` global of .rodata, found by name through BTF so
 * the layout of the section is never assumed. */
static int set_rodata(struct bpf_object *obj, const char *var, const void *value, size_t size)
{
	struct bpf_map *map = bpf_object__find_map_by_name(obj, ".rodata");
	struct btf *btf = bpf_object__btf(obj);
	const struct btf_type *sec;
	const struct btf_var_secinfo *vs;
	size_t map_size;
	char *data;
	int id, i;

	if (!map || !btf)
		return -ENOENT;
	data = (char *)bpf_map__initial_value(map, &map_size);
	id = btf__find_by_name_kind(btf, ".rodata", BTF_KIND_DATASEC);
	if (!data || id < 0)
		return -ENOENT;
	sec = btf__type_by_id(btf, id);
	vs = btf_var_secinfos(sec);
	for (i = 0; i < btf_vlen(sec); i++, vs++) {
		const struct btf_type *t = btf__type_by_id(btf, vs->type);

		if (strcmp(btf__name_by_offset(btf, t->name_off), var) != 0)
			continue;
		if (vs->size != size || vs->offset + size > map_size)
			return -EINVAL;
		memcpy(data + vs->offset, value, size);
		return 0;
	}
	return -ENOENT;
}

/* Every ring carries BPF_F_NUMA_NODE, the template of tm_rings too (the
 * kernel puts only rings of the template's flags in the array); node -1
 * (NUMA_NO_NODE) leaves the memory where the kernel allocates it. */
static int ringbuf_create(const char *name, uint32_t bytes, int node)
{
	LIBBPF_OPTS(bpf_map_create_opts, opts, .map_flags = BPF_F_NUMA_NODE,
		    .numa_node = node >= 0 ? (uint32_t)node : (uint32_t)-1);

	return bpf_map_create(BPF_MAP_TYPE_RINGBUF, name, 0, 0, bytes, &opts);
}

int CMirrorBPF_object_configure(struct bpf_object *obj, uint32_t ring_bytes, uint32_t cpus, int *template_fd)
{
	struct bpf_map *rings = bpf_object__find_map_by_name(obj, "tm_rings");
	uint64_t wake_bytes;
	int err, fd;

	*template_fd = -1;
	if (!rings)
		return -ENOENT;
	err = bpf_map__set_max_entries(rings, cpus);
	if (err)
		return err;
	fd = ringbuf_create("tm_ring_tmpl", ring_bytes, -1);
	if (fd < 0)
		return -errno;
	err = bpf_map__set_inner_map_fd(rings, fd);
	if (err) {
		close(fd);
		return err;
	}
	*template_fd = fd;
	wake_bytes = ring_bytes / 8;
	return set_rodata(obj, "tm_wake_bytes", &wake_bytes, sizeof(wake_bytes));
}

int CMirrorBPF_object_set_rodata(struct bpf_object *obj, const char *name, const void *value, size_t size)
{
	return set_rodata(obj, name, value, size);
}

int CMirrorBPF_object_load(struct bpf_object *obj, int template_fd)
{
	int err = bpf_object__load(obj);

	if (template_fd >= 0)
		close(template_fd);
	return err;
}

void CMirrorBPF_object_close(struct bpf_object *obj)
{
	bpf_object__close(obj);
}

int CMirrorBPF_object_map_fd(struct bpf_object *obj, const char *name)
{
	struct bpf_map *map = bpf_object__find_map_by_name(obj, name);

	return map ? bpf_map__fd(map) : -ENOENT;
}

int CMirrorBPF_object_prog_fd(struct bpf_object *obj, const char *name)
{
	struct bpf_program *prog = bpf_object__find_program_by_name(obj, name);

	return prog ? bpf_program__fd(prog) : -ENOENT;
}

/* ---- maps ---- */

int CMirrorBPF_map_update(int fd, const void *key, const void *value, uint64_t flags)
{
	return neg_errno(bpf_map_update_elem(fd, key, value, flags));
}

int CMirrorBPF_map_lookup(int fd, const void *key, void *value)
{
	return neg_errno(bpf_map_lookup_elem(fd, key, value));
}

int CMirrorBPF_map_delete(int fd, const void *key)
{
	return neg_errno(bpf_map_delete_elem(fd, key));
}

int CMirrorBPF_map_next_key(int fd, const void *key, void *next)
{
	return neg_errno(bpf_map_get_next_key(fd, key, next));
}

int CMirrorBPF_ringbuf_create(const char *name, uint32_t bytes, int node)
{
	return neg_errno(ringbuf_create(name, bytes, node));
}

/* Writes entries 0..count-1 of an array in one call. */
static int fill_array(int fd, const void *values, uint32_t count)
{
	uint32_t *keys = malloc(sizeof(*keys) * count), i, n = count;
	int err;

	if (!keys)
		return -ENOMEM;
	for (i = 0; i < count; i++)
		keys[i] = i;
	err = neg_errno(bpf_map_update_batch(fd, keys, values, &n, NULL));
	free(keys);
	return err;
}

int CMirrorBPF_scope_tables_create(const uint64_t *classes, const struct tm_addr_bound *bounds,
				   uint32_t bound_count, const struct tm_bits *bits,
				   uint32_t class_count, int fds[3])
{
	LIBBPF_OPTS(bpf_map_create_opts, sized, .map_flags = BPF_F_INNER_MAP);
	int err, i;

	fds[0] = bpf_map_create(BPF_MAP_TYPE_ARRAY, "tm_value_class", sizeof(uint32_t), sizeof(uint64_t),
				TM_CLASS_ELEMENTS, NULL);
	fds[1] = bpf_map_create(BPF_MAP_TYPE_ARRAY, "tm_addr_bounds", sizeof(uint32_t),
				sizeof(struct tm_addr_bound), bound_count, &sized);
	fds[2] = bpf_map_create(BPF_MAP_TYPE_ARRAY, "tm_class_bits", sizeof(uint32_t), sizeof(struct tm_bits),
				class_count, &sized);
	/* libbpf >= 1.0 returns -errno on failure. */
	err = fds[0] < 0 ? fds[0] : fds[1] < 0 ? fds[1] : fds[2] < 0 ? fds[2] : 0;
	if (!err)
		err = fill_array(fds[0], classes, TM_CLASS_ELEMENTS);
	if (!err)
		err = fill_array(fds[1], bounds, bound_count);
	if (!err)
		err = fill_array(fds[2], bits, class_count);
	if (err) {
		for (i = 0; i < 3; i++) {
			if (fds[i] >= 0)
				close(fds[i]);
			fds[i] = -1;
		}
	}
	return err;
}

/* ---- programs ---- */

int CMirrorBPF_prog_info_by_id(uint32_t id, char name[16], uint32_t *type)
{
	struct bpf_prog_info info;
	__u32 len = sizeof(info);
	int fd, err;

	fd = bpf_prog_get_fd_by_id(id);
	if (fd < 0)
		return neg_errno(fd);
	memset(&info, 0, sizeof(info));
	err = bpf_obj_get_info_by_fd(fd, &info, &len);
	close(fd);
	if (err)
		return neg_errno(err);
	memcpy(name, info.name, 16);
	name[15] = 0;
	*type = info.type;
	return 0;
}

int CMirrorBPF_prog_control(uint32_t prog_id, struct tm_control *control)
{
	struct bpf_prog_info info;
	__u32 len = sizeof(info), ids[64], n, i, key = 0;
	int fd, err;

	fd = bpf_prog_get_fd_by_id(prog_id);
	if (fd < 0)
		return neg_errno(fd);
	memset(&info, 0, sizeof(info));
	info.nr_map_ids = sizeof(ids) / sizeof(ids[0]);
	info.map_ids = (__u64)(unsigned long)ids;
	err = bpf_obj_get_info_by_fd(fd, &info, &len);
	close(fd);
	if (err)
		return neg_errno(err);
	n = info.nr_map_ids < 64 ? info.nr_map_ids : 64;
	for (i = 0; i < n; i++) {
		struct bpf_map_info mi;
		__u32 mlen = sizeof(mi);
		int mfd = bpf_map_get_fd_by_id(ids[i]);

		if (mfd < 0)
			continue;
		memset(&mi, 0, sizeof(mi));
		if (bpf_obj_get_info_by_fd(mfd, &mi, &mlen) == 0 && strcmp(mi.name, "tm_control") == 0 &&
		    mi.value_size == sizeof(*control)) {
			err = neg_errno(bpf_map_lookup_elem(mfd, &key, control));
			close(mfd);
			return err;
		}
		close(mfd);
	}
	return -ENOENT;
}

int CMirrorBPF_prog_test_run(int prog_fd, const void *data, uint32_t len,
			     void *ctx, uint32_t ctx_len, uint32_t repeat,
			     uint32_t *retval, uint32_t *duration_ns)
{
	LIBBPF_OPTS(bpf_test_run_opts, opts,
		    .data_in = data,
		    .data_size_in = len,
		    .ctx_in = ctx_len ? ctx : NULL,
		    .ctx_size_in = ctx_len,
		    .ctx_out = ctx_len ? ctx : NULL,
		    .ctx_size_out = ctx_len,
		    .repeat = repeat);
	int err = bpf_prog_test_run_opts(prog_fd, &opts);

	if (err)
		return neg_errno(err);
	*retval = opts.retval;
	*duration_ns = opts.duration;
	return 0;
}

int CMirrorBPF_prog_run_live(int prog_fd, const void *data, uint32_t len, uint32_t repeat,
			     uint32_t batch, uint32_t *duration_ns)
{
	LIBBPF_OPTS(bpf_test_run_opts, opts,
		    .data_in = data,
		    .data_size_in = len,
		    .repeat = repeat,
		    .batch_size = batch,
		    .flags = BPF_F_TEST_XDP_LIVE_FRAMES);
	int err = bpf_prog_test_run_opts(prog_fd, &opts);

	if (err)
		return neg_errno(err);
	*duration_ns = opts.duration;
	return 0;
}

/* ---- attachments ---- */

int CMirrorBPF_xdp_link(int prog_fd, int ifindex, uint32_t flags)
{
	LIBBPF_OPTS(bpf_link_create_opts, opts, .flags = flags);

	return neg_errno(bpf_link_create(prog_fd, ifindex, BPF_XDP, &opts));
}

int CMirrorBPF_xdp_query(int ifindex, uint32_t *prog_id)
{
	LIBBPF_OPTS(bpf_xdp_query_opts, opts);
	int err = bpf_xdp_query(ifindex, 0, &opts);

	if (err)
		return neg_errno(err);
	*prog_id = opts.prog_id ? opts.prog_id :
		   opts.drv_prog_id ? opts.drv_prog_id :
		   opts.skb_prog_id ? opts.skb_prog_id : opts.hw_prog_id;
	return 0;
}

int CMirrorBPF_tcx_link(int prog_fd, int ifindex, int egress)
{
	/* libbpf 1.1's bpf_link_create passes unknown attach types through with
	 * zeroed options: no BPF_F_BEFORE/AFTER, so the link goes last. */
	return neg_errno(bpf_link_create(prog_fd, ifindex,
					 egress ? TM_BPF_TCX_EGRESS : TM_BPF_TCX_INGRESS, NULL));
}

int CMirrorBPF_tcx_query(int ifindex, int egress, uint32_t *prog_ids, uint32_t max)
{
	__u32 count = max;
	int err = bpf_prog_query(ifindex, egress ? TM_BPF_TCX_EGRESS : TM_BPF_TCX_INGRESS, 0, NULL,
				 prog_ids, &count);

	return err ? neg_errno(err) : (int)count;
}

int CMirrorBPF_tc_attach(int prog_fd, int ifindex, int egress)
{
	LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex,
		    .attach_point = egress ? BPF_TC_EGRESS : BPF_TC_INGRESS);
	LIBBPF_OPTS(bpf_tc_opts, opts, .handle = CMIRRORBPF_TC_HANDLE,
		    .priority = CMIRRORBPF_TC_PRIORITY, .prog_fd = prog_fd);
	int err = bpf_tc_hook_create(&hook);

	/* The clsact qdisc may be there already (ours from a crash, or someone
	 * else's); it is shared and never removed by us. */
	if (err && err != -EEXIST)
		return err;
	return bpf_tc_attach(&hook, &opts);
}

int CMirrorBPF_tc_detach(int ifindex, int egress)
{
	LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex,
		    .attach_point = egress ? BPF_TC_EGRESS : BPF_TC_INGRESS);
	LIBBPF_OPTS(bpf_tc_opts, opts, .handle = CMIRRORBPF_TC_HANDLE,
		    .priority = CMIRRORBPF_TC_PRIORITY);

	return bpf_tc_detach(&hook, &opts);
}

int CMirrorBPF_tc_query(int ifindex, int egress, uint32_t *prog_id)
{
	LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex,
		    .attach_point = egress ? BPF_TC_EGRESS : BPF_TC_INGRESS);
	LIBBPF_OPTS(bpf_tc_opts, opts, .handle = CMIRRORBPF_TC_HANDLE,
		    .priority = CMIRRORBPF_TC_PRIORITY);
	int err = bpf_tc_query(&hook, &opts);

	*prog_id = 0;
	if (err == -ENOENT || err == -EINVAL)
		return 0; /* no clsact qdisc or no such filter */
	if (err)
		return err;
	*prog_id = opts.prog_id;
	return 0;
}

/* ---- ring buffers ---- */

int CMirrorBPF_ring_map(int fd, uint32_t bytes, struct CMirrorBPF_ring *ring)
{
	long page = sysconf(_SC_PAGESIZE);
	void *cons, *prod;

	memset(ring, 0, sizeof(*ring));
	cons = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (cons == MAP_FAILED)
		return -errno;
	/* The kernel maps the data area twice after the producer page. */
	prod = mmap(NULL, page + 2 * (size_t)bytes, PROT_READ, MAP_SHARED, fd, page);
	if (prod == MAP_FAILED) {
		int err = -errno;

		munmap(cons, page);
		return err;
	}
	ring->consumer_pos = cons;
	ring->producer_pos = prod;
	ring->data = (const uint8_t *)prod + page;
	ring->mask = (uint64_t)bytes - 1;
	ring->data_size = bytes;
	ring->page_size = page;
	return 0;
}

void CMirrorBPF_ring_unmap(struct CMirrorBPF_ring *ring)
{
	if (ring->consumer_pos)
		munmap(ring->consumer_pos, ring->page_size);
	if (ring->producer_pos)
		munmap((void *)ring->producer_pos, ring->page_size + 2 * ring->data_size);
	memset(ring, 0, sizeof(*ring));
}

/* ---- outcome names ---- */

#define TM_LABEL(name, label) #label,
static const char *const if_labels[] = { TM_IF_OUTCOMES(TM_LABEL) };
static const char *const session_labels[] = { TM_SESSION_OUTCOMES(TM_LABEL) };
#undef TM_LABEL

const char *CMirrorBPF_if_outcome_label(uint32_t outcome)
{
	return outcome < TM_IF_OUTCOME_COUNT ? if_labels[outcome] : "unknown";
}

const char *CMirrorBPF_session_outcome_label(uint32_t outcome)
{
	return outcome < TM_SESSION_OUTCOME_COUNT ? session_labels[outcome] : "unknown";
}
