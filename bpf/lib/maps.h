/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Every map of the mirror program, one comment each. Keys and values are
 * defined in tm_abi.h; user space finds the maps by these names. */
#ifndef TM_MAPS_H
#define TM_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "../tm_abi.h"

/* Which plan bank the hooks read, and who loaded the object (entry 0). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tm_control);
} tm_control SEC(".maps");

/* (namespace, ifindex) -> interface slot. Slots outlive reloads so counters
 * stay put. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, TM_MAX_SLOTS);
	__type(key, struct tm_slot_key);
	__type(value, __u32);
} tm_slots SEC(".maps");

/* The profile of each bank, interface and direction (0: mirror nothing). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, TM_SCOPE_COUNT);
	__type(key, __u32);
	__type(value, __u32);
} tm_scope_profiles SEC(".maps");

/* Sessions of each profile, in evaluation order. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, TM_MAX_PROFILES);
	__type(key, __u32);
	__type(value, struct tm_profile);
} tm_profiles SEC(".maps");

/* Per-session settings: limits, sampling, rate, tunnel header (per bank). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, TM_BANKS * TM_MAX_SESSIONS);
	__type(key, __u32);
	__type(value, struct tm_session);
} tm_sessions SEC(".maps");

/* The classifier's tables of each profile (see tm_abi.h), key = profile.
 * User space creates the inner maps when it writes a profile. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, TM_MAX_PROFILES);
	__type(key, __u32);
	__array(values, struct {
		__uint(type, BPF_MAP_TYPE_ARRAY);
		__uint(max_entries, TM_CLASS_ELEMENTS);
		__type(key, __u32);
		__type(value, __u64);
	});
} tm_value_classes SEC(".maps");

/* Per profile, an array sized to the profile's entries (BPF_F_INNER_MAP lets the
 * inner maps' sizes differ). Inner maps of structs give sizes, not types: the
 * BTF of a struct named only there is a forward declaration libbpf cannot
 * size. */
#define TM_SCOPE_TABLES(name, value_bytes)                          \
	struct {                                                    \
		__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);           \
		__uint(max_entries, TM_MAX_PROFILES);               \
		__type(key, __u32);                                 \
		__array(values, struct {                            \
			__uint(type, BPF_MAP_TYPE_ARRAY);           \
			__uint(max_entries, 1);                     \
			__uint(map_flags, BPF_F_INNER_MAP);         \
			__uint(key_size, sizeof(__u32));            \
			__uint(value_size, value_bytes);            \
		});                                                 \
	} name SEC(".maps")

TM_SCOPE_TABLES(tm_addr_bounds, sizeof(struct tm_addr_bound));
TM_SCOPE_TABLES(tm_class_bits, sizeof(struct tm_bits));

/* Outcome counters per interface slot and direction. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, TM_MAX_SLOTS * TM_DIR_COUNT);
	__type(key, __u32);
	__type(value, struct tm_if_counters);
} tm_if_stats SEC(".maps");

/* Outcome counters per bank, session and direction. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, TM_BANKS * TM_MAX_SESSIONS * TM_DIR_COUNT);
	__type(key, __u32);
	__type(value, struct tm_session_counters);
} tm_session_stats SEC(".maps");

/* Per-CPU count of selected wire packets per session, for 1-in-N sampling. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, TM_BANKS * TM_MAX_SESSIONS);
	__type(key, __u32);
	__type(value, __u64);
} tm_sample_count SEC(".maps");

/* Bounded sessions' usage: one entry per usage slot, shared by all CPUs. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, TM_MAX_USAGE);
	__type(key, __u32);
	__type(value, struct tm_session_usage);
} tm_session_usage SEC(".maps");

/* Deduplication: packets recently seen, by the hash of what forwarding
 * leaves alone; the least recently used go first. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, TM_DEDUP_ENTRIES);
	__type(key, __u64);
	__type(value, struct tm_dedup_seen);
} tm_dedup SEC(".maps");

/* Where a sliced GSO record is built before it goes into the ring in one
 * copy (its size is known only then), and the payload chunks are summed.
 * Offsets into `frame` stay below 2 * TM_MAX_SLICED_FRAME for the verifier. */
/* State of the loop that sums the payload of each kept segment. */
struct tm_sum_loop {
	__u32 off;    /* next byte to sum */
	__u32 left;   /* bytes of the current segment still to sum */
	__u32 start;  /* first payload byte of the current segment */
	__u32 stride; /* bytes from one kept segment to the next */
	__u32 end;    /* end of the payload */
	__u32 gso;
	__u32 done;   /* segments summed */
	__u32 count;  /* segments to sum */
	__u32 sum;
	__u32 err;
};

struct tm_slice_args {
	__u32 session, bank, frame_len, limit, first, segs, gso, flags;
};

struct tm_slice_scratch {
	/* GSO super-packets this CPU sliced, ever (for bpftool map dump). */
	__u64 sliced_gso;
	struct tm_slice_args args;
	struct tm_sum_loop loop;
	struct tm_record rec;
	__u8 frame[2 * TM_MAX_SLICED_FRAME + sizeof(struct tm_slice_trailer)];
	__u8 chunk[TM_SUM_CHUNK];
	__u32 sum[TM_MAX_SLICES];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tm_slice_scratch);
} tm_slice_scratch SEC(".maps");

/* Token bucket per session, shared by all CPUs (hence the lock). */
struct tm_rate_state {
	struct bpf_spin_lock lock;
	__u32 pad;
	__u64 tokens; /* scaled by 1e9: token-nanoseconds */
	__u64 last_ns;
};
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, TM_BANKS * TM_MAX_SESSIONS);
	__type(key, __u32);
	__type(value, struct tm_rate_state);
} tm_rate SEC(".maps");

/* Cookies of the agent's sockets (see tm_abi.h): cookie -> 1. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, TM_MAX_OWN_SOCKETS);
	__type(key, __u64);
	__type(value, __u32);
} tm_own_sockets SEC(".maps");

/* The target endpoints of the plan in force: destination -> 1. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, TM_MAX_OWN_DESTS);
	__type(key, struct tm_dest_key);
	__type(value, __u32);
} tm_own_dests SEC(".maps");

/* Bit p set: UDP port p is the port of a tm_own_dests entry (written by
 * user space), or of a tm_own_seen entry (tm_seen_ports, set by the hooks
 * and never cleared): only packets to those ports pay for hash lookups. Two
 * maps, so neither side's read-modify-write loses the other's bits. */
#define TM_PORT_BITMAP(name)                              \
	struct {                                          \
		__uint(type, BPF_MAP_TYPE_ARRAY);         \
		__uint(max_entries, 65536 / 64);          \
		__type(key, __u32);                       \
		__type(value, __u64);                     \
	} name SEC(".maps")

TM_PORT_BITMAP(tm_own_ports);
TM_PORT_BITMAP(tm_seen_ports);

/* Destinations the agent's copies had after netfilter (learned at egress,
 * least recently seen evicted first). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, TM_MAX_OWN_DESTS);
	__type(key, struct tm_dest_key);
	__type(value, __u32);
} tm_own_seen SEC(".maps");

/* One ring buffer per possible CPU, so producers never contend. User space
 * creates the rings and fills the slots before attaching; it also supplies
 * the inner-map template (a ring of the configured size) at load time
 * instead of a BTF-declared inner map, because libbpf 1.1 cannot resize a
 * BTF-declared inner map (bpf_map__set_max_entries dereferences its NULL
 * object pointer). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} tm_rings SEC(".maps");

#endif /* TM_MAPS_H */
