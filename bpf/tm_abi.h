/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The kernel/user ABI of traffic-mirror: every struct, index, limit and
 * outcome that crosses the line between the BPF program (bpf/mirror.bpf.c)
 * and the Swift agent. Both sides include this one file; the Swift side
 * imports it through the CMirrorBPF module and checks the layouts in
 * Tests/MirrorDataPlaneTests/ABILayoutTests.swift.
 *
 * Only fixed-width types, no pointers, no bitfields.
 */
#ifndef TM_ABI_H
#define TM_ABI_H

#include <linux/types.h>

/* ---- Limits ------------------------------------------------------------ */

/* Interfaces one agent can hook, in any network namespaces (slots are
 * stable across reloads). */
#define TM_MAX_SLOTS 1024
/* Profiles (see tm_scope_profiles) the two banks can hold together; profile
 * 0 is the empty one. A plan uses at most TM_MAX_PROFILES / 2 - 1. */
#define TM_MAX_PROFILES 2048
/* Sessions in one plan bank, across all interfaces. */
#define TM_MAX_SESSIONS 256
/* Sessions evaluated for one interface and direction. */
#define TM_MAX_SESSIONS_PER_SLOT 32
/* Rules in one filter direction (AWS allows 10). */
#define TM_MAX_RULES 256
/* 64-bit words of a profile's rule bitmap: every rule of every session of
 * one profile has one bit. */
#define TM_RULE_WORDS (TM_MAX_SESSIONS_PER_SLOT * TM_MAX_RULES / 64)
/* Words of one filter direction (TM_MAX_RULES bits). */
#define TM_FILTER_WORDS (TM_MAX_RULES / 64)
/* Bytes of one frame copied into the ring; longer frames are truncated and
 * counted (TM_SO_TRUNCATED_MAX). Covers every jumbo frame with two tags. */
#define TM_MAX_FRAME 16384
/* Bytes of a GSO super-packet copied whole so user space can cut it into
 * the segments the wire will carry (64 KiB GSO plus headers and a tag). */
#define TM_MAX_GSO_FRAME 65664
/* VLAN tags the parser looks through (802.1Q / 802.1ad). */
#define TM_MAX_VLAN_DEPTH 2
/* IPv6 extension headers walked before giving up on the transport header. */
#define TM_MAX_EXT_HEADERS 8
/* Plan banks: the hooks read one while user space writes the other. */
#define TM_BANKS 2
/* Bytes of the tunnel header (VXLAN, or GENEVE without options) that the
 * kernel writes into every record so user space sends straight from the ring. */
#define TM_TUNNEL_HDR_LEN 8

enum tm_direction {
	TM_DIR_INGRESS = 0, /* packets the interface receives (XDP) */
	TM_DIR_EGRESS = 1,  /* packets the interface sends (tc) */
	TM_DIR_COUNT = 2,
};

/* ---- Outcomes (one list for both sides, Cilium drop_reasons style) ------ */

/*
 * Per interface and direction. The first five partition what a hook saw:
 *   seen = own_traffic + no_match + rejected + selected
 * where selected is also counted per session. The side counters after them
 * describe packets already counted in the partition.
 */
#define TM_IF_OUTCOMES(X)                                                  \
	X(SEEN, seen)                                                      \
	X(OWN_TRAFFIC, own_traffic)                                        \
	X(NO_MATCH, no_match)                                              \
	X(REJECTED, rejected)                                              \
	X(SELECTED, selected)                                              \
	X(MALFORMED_IP, malformed_ip)                                      \
	X(L4_TRUNCATED, l4_truncated)

/*
 * Per session and direction. selected = sent (counted by user space) + the
 * kernel drops here + the user-space drops. TRUNCATED_* are not drops: the
 * shortened copy still goes out.
 *
 * All counts are of packets as the wire carries them: a GSO super-packet
 * that tc sees counts as the gso_segs segments it becomes. When it cannot
 * be cut into them (a tunnel's GSO), one truncated copy goes and the other
 * segments count as gso_unsegmented.
 */
#define TM_SESSION_OUTCOMES(X)                                             \
	X(SELECTED, selected)                                              \
	X(DROP_RING_FULL, ring_full)                                       \
	X(DROP_SAMPLED_OUT, sampled_out)                                   \
	X(DROP_RATE_LIMITED, rate_limited)                                 \
	X(DROP_CAPTURE_ERROR, capture_error)                               \
	X(DROP_GSO_UNSEGMENTED, gso_unsegmented)                           \
	X(DROP_NO_RING, no_ring)                                           \
	X(DROP_DUPLICATE, duplicate)                                       \
	X(TRUNCATED_LENGTH, packet_length)                                 \
	X(TRUNCATED_MTU, mtu)                                              \
	X(TRUNCATED_MAX, capture_max)

#define TM_ENUM_IF(name, label) TM_IO_##name,
enum tm_if_outcome { TM_IF_OUTCOMES(TM_ENUM_IF) TM_IF_OUTCOME_COUNT };
#undef TM_ENUM_IF

#define TM_ENUM_SO(name, label) TM_SO_##name,
enum tm_session_outcome { TM_SESSION_OUTCOMES(TM_ENUM_SO) TM_SESSION_OUTCOME_COUNT };
#undef TM_ENUM_SO

/* Value of tm_if_stats (per-CPU), key = slot * TM_DIR_COUNT + direction. */
struct tm_if_counters {
	__u64 count[TM_IF_OUTCOME_COUNT];
};

/* Value of tm_session_stats (per-CPU),
 * key = (bank * TM_MAX_SESSIONS + session) * TM_DIR_COUNT + direction. */
struct tm_session_counters {
	__u64 count[TM_SESSION_OUTCOME_COUNT];
};

/* ---- Plan (written by user space, read by the hooks) -------------------- */

/* tm_control[0]: which bank the hooks read. Flipped with one 4-byte write;
 * a hook reads it once per packet, so no packet sees half a plan.
 *
 * It also names the process that loaded the object (every program uses
 * this map, so it is found from any of them): a netlink tc filter outlives
 * a crashed agent (kernels without tcx), and the next start removes a
 * filter of ours only when its owner is gone, never a running agent's. */
struct tm_control {
	__u32 active_bank;
	__u32 generation;  /* counts flips; informational */
	__u32 owner_pid;
	__u32 reserved;
	__u64 owner_start; /* field 22 of /proc/PID/stat: start time since boot */
};

enum tm_session_flags {
	TM_SESSION_ACTIVE = 1 << 0,
	TM_SESSION_FILTERED = 1 << 1, /* has a filter; else mirrors every frame */
	TM_SESSION_BOUNDED = 1 << 2,  /* a time window or limits: see below */
};

/* What packet_length counts from: the frame's start (length_limit), or the
 * end of the headers of a layer, per packet. */
enum tm_slice_after {
	TM_SLICE_FIXED = 0,
	TM_SLICE_L3 = 1, /* Ethernet, VLAN tags, IP and IPv6 extension headers */
	TM_SLICE_L4 = 2, /* and the TCP header (data offset), UDP's 8, ICMP's 8 */
};

/* tm_sessions, key = bank * TM_MAX_SESSIONS + session. */
struct tm_session {
	__u32 flags;        /* enum tm_session_flags */
	__u32 length_limit; /* frame bytes kept because of packet_length; 0 = all */
	__u32 mtu_limit;    /* frame bytes that fit the target MTU; 0 = no limit */
	__u32 sample_every; /* mirror 1 of every N selected packets; 0 or 1 = all */
	/* Token bucket, 0 = unlimited: tokens per second and bucket depth, in
	 * packets, or in bits when rate_bits is 1. */
	__u64 rate;
	__u64 burst;
	__u32 rate_bits;
	/* Slicing relative to a layer (enum tm_slice_after): each copy keeps
	 * that layer's headers plus slice_bytes; a frame without the layer
	 * keeps length_limit bytes. */
	__u16 slice_after;
	__u16 slice_bytes;
	__u8 tunnel_hdr[TM_TUNNEL_HDR_LEN]; /* ready to send, VNI included */
	/* TM_SESSION_BOUNDED: the session selects only inside [start_ns,
	 * stop_ns) of bpf_ktime_get_ns(), and only packets that keep what it
	 * selected within max_packets and max_bytes (0: no limit), counted in
	 * tm_session_usage[usage_slot]. */
	__u64 start_ns;
	__u64 stop_ns;
	__u64 max_packets;
	__u64 max_bytes;
	/* Deduplication: a packet seen on another mirrored interface (or in
	 * the other direction) within this many ns is held back (0: off). */
	__u64 dedup_window_ns;
	__u32 usage_slot;
	__u32 reserved;
};

/* tm_session_usage, key = a session's usage_slot (stable across reloads
 * while the session is unchanged): what it selected, shared by all CPUs
 * (atomic adds), and which limit ended it. */
#define TM_MAX_USAGE (TM_BANKS * TM_MAX_SESSIONS)
enum tm_session_end {
	TM_END_MAX_PACKETS = 1 << 0,
	TM_END_MAX_BYTES = 1 << 1,
};
struct tm_session_usage {
	__u64 packets;
	__u64 bytes;  /* frame bytes as the hook saw them (a GSO super-packet's whole length) */
	__u32 ended;  /* enum tm_session_end: set by the first packet a limit refused */
	__u32 pad;
};

/* tm_dedup (LRU hash), key = a 64-bit hash of what forwarding does not
 * change (see tm_dedup_key): where and when a packet was last seen. */
#define TM_DEDUP_ENTRIES 65536
struct tm_dedup_seen {
	__u64 seen_ns;
	__u32 where; /* interface slot * TM_DIR_COUNT + direction */
	__u32 pad;
};

/* tm_slots key: an interface is its namespace and its index there. */
struct tm_slot_key {
	__u64 netns;  /* the interface's namespace: SO_NETNS_COOKIE there */
	__u32 ifindex;
	__u32 pad;
};

/* Plans are banked per interface slot and direction: the "scope". */
#define TM_SCOPE(bank, slot, dir) \
	(((bank) * TM_MAX_SLOTS + (slot)) * TM_DIR_COUNT + (dir))
#define TM_SCOPE_COUNT (TM_BANKS * TM_MAX_SLOTS * TM_DIR_COUNT)

/*
 * tm_scope_profiles, key = scope: the profile the scope evaluates. A profile
 * is a list of sessions with its classifier tables; every interface and
 * direction that the same sessions mirror shares one, so a thousand
 * interfaces of one pattern cost one set of tables, and an interface that
 * appears costs two 4-byte writes. User space never rewrites a profile that
 * the active bank uses: a changed one gets a free index.
 *
 * tm_profiles, key = profile. The sessions in evaluation order. A filtered
 * session owns rule-bitmap words [word_start[i], word_start[i] +
 * word_count[i]); sessions that share a filter share words.
 */
struct tm_profile {
	__u32 session_count;
	__u32 word_total;    /* bitmap words in use in this profile */
	__u32 filtered_mask; /* bit i: session i has a filter */
	__u32 reserved;
	__u16 session[TM_MAX_SESSIONS_PER_SLOT];
	__u16 word_start[TM_MAX_SESSIONS_PER_SLOT];
	__u8 word_count[TM_MAX_SESSIONS_PER_SLOT];
	/* Per address field (TM_FIELD_SRC4 + i): its run of tm_addr_bound
	 * entries in the profile's address table. */
	__u32 addr_start[4];
	__u32 addr_count[4];
	/* Bit b set: rule b of this profile accepts (else it rejects). */
	__u64 accept[TM_RULE_WORDS];
};

/*
 * Filters as bitmaps (the bit-vector classifier): every rule of a profile has
 * one bit. For each packet field one lookup yields a class: the set of
 * rules that the field's value allows, stored once per profile as a bitmap.
 * The AND over the fields is the set of rules that match, and the lowest
 * set bit of a session's words is its first matching rule.
 *
 * Per profile with filtered sessions the agent creates three maps and stores them in the outer maps of maps.h:
 *   - value classes: protocol and ports index an array directly (four
 *     16-bit classes per 64-bit element, TM_CLASS_* bases below);
 *   - address bounds: per address field, its value space cut into
 *     intervals over which the allowed rules stay the same, sorted by lower
 *     bound (the first is 0), found by binary search;
 *   - bitmaps: class -> struct tm_bits; class 0 allows no rule.
 */
enum tm_field {
	TM_FIELD_PROTO = 0,
	TM_FIELD_SPORT = 1,
	TM_FIELD_DPORT = 2,
	TM_FIELD_SRC4 = 3,
	TM_FIELD_DST4 = 4,
	TM_FIELD_SRC6 = 5,
	TM_FIELD_DST6 = 6,
	TM_FIELD_COUNT = 7,
};

/* Port value of a packet without ports (ICMP, non-first fragment, transport
 * header cut short, not TCP/UDP): only rules without ports allow it. */
#define TM_PORT_NONE 65536
/* Protocol value of an IP packet whose upper protocol was not found (IPv6
 * extension-header chain longer than TM_MAX_EXT_HEADERS): only "all". */
#define TM_PROTO_UNKNOWN 256

/* Index of a value in the value-class array: base of its field + value;
 * four 16-bit classes per 64-bit element. */
enum tm_class_layout {
	TM_CLASS_PROTO = 0,
	TM_CLASS_SPORT = TM_PROTO_UNKNOWN + 1,
	TM_CLASS_DPORT = TM_CLASS_SPORT + TM_PORT_NONE + 1,
	TM_CLASS_VALUES = TM_CLASS_DPORT + TM_PORT_NONE + 1,
	TM_CLASS_ELEMENTS = (TM_CLASS_VALUES + 3) / 4,
};
/* Binary-search steps over one address field's intervals: enough for
 * two per rule of the profile, plus one. */
#define TM_ADDR_SEARCH_STEPS 15

/* An address interval's lower bound as a 128-bit number (IPv4 in lo), and
 * the class of its bitmap. */
struct tm_addr_bound {
	__u64 hi;
	__u64 lo;
	__u32 bitmap;
	__u32 pad;
};

/* A class's bitmap. Only the first word_total words of a profile count; bit w
 * of `nonzero` says whether word w has any bit set, so the AND of five
 * bitmaps' summaries names the only words that can hold a match (the
 * aggregated bit vector of Baboescu and Varghese). */
struct tm_bits {
	__u64 word[TM_RULE_WORDS];
	__u64 nonzero[TM_RULE_WORDS / 64];
};

/* ---- The agent's own output ---------------------------------------------- */

/*
 * The agent never mirrors its own output (SPEC §3.6), and recognises it by
 * what no other component rewrites:
 *   - at egress, by the socket it left: tm_own_sockets holds the cookies
 *     (SO_COOKIE) of every socket the agent sends from, and the tc hooks
 *     look up bpf_get_socket_cookie(skb) — NAT, marks and DSCP rewrites do
 *     not change which socket an skb belongs to;
 *   - at ingress, where the socket is gone (loopback orphans the skb), by
 *     where it goes: UDP to one of the agent's target endpoints (address and
 *     port, tm_own_dests, written by the agent), or to a destination that an
 *     egress hook saw one of the agent's sockets send to after netfilter had
 *     rewritten it (tm_own_seen, learned by the hooks).
 */
struct tm_dest_key {
	__u32 addr[4]; /* network order; IPv4 in addr[0], the rest 0 */
	__u16 port;    /* host order */
	__u8 family;   /* 4 or 6 */
	__u8 pad;
};

/* Sockets the agent may send from at once: two raw sockets, the health
 * monitor's two ICMP sockets and one TCP probe per probed endpoint, UDP GSO
 * sockets when enabled; more are refused, and the agent says so. */
#define TM_MAX_OWN_SOCKETS 4096
/* Target endpoints (config limit: 64 per target) and learned destinations. */
#define TM_MAX_OWN_DESTS 4096

/* ---- Ring records (kernel -> user space) -------------------------------- */

enum tm_record_flags {
	TM_REC_TRUNC_LENGTH = 1 << 0,  /* cut by packet_length */
	TM_REC_TRUNC_MTU = 1 << 1,     /* cut to fit the target MTU */
	TM_REC_TRUNC_MAX = 1 << 2,     /* cut at TM_MAX_FRAME */
	TM_REC_VLAN_INSERTED = 1 << 3, /* tag re-inserted from skb metadata */
	TM_REC_L4_COMPLETE = 1 << 4,   /* a whole TCP/UDP segment from l4_off */
	TM_REC_FRAGMENT = 1 << 5,      /* IP fragment, first or not */
	TM_REC_GSO = 1 << 6,           /* a whole TCP/UDP GSO super-packet: cut it into
					* gso_segs segments of gso_size payload bytes;
					* limits apply per segment, in user space */
	TM_REC_SLICED = 1 << 7,        /* cut in the kernel with payload sums (a GSO
					* super-packet's kept segments, or one TCP/UDP
					* packet): see struct tm_slice_trailer */
};

/*
 * A GSO super-packet whose segments packet_length (or the target MTU) cuts
 * anyway is not copied whole: the record holds the headers every segment
 * repeats once, then for each segment sampling kept the first slice_len
 * bytes of its payload (fewer for a shorter last segment), cap_len bytes in
 * all; this trailer follows at the next 4-byte boundary. A single TCP/UDP
 * packet that the tc hook cuts is one slice (count 1), without TM_REC_GSO. sum[i] is the
 * one's-complement sum of segment i's whole payload as bpf_csum_diff
 * returns it (32 bits, unfolded, host byte order), so user space writes the
 * checksum the segment carries on the wire.
 */
#define TM_MAX_SLICES 64
struct tm_slice_trailer {
	__u32 slice_len;
	__u32 count; /* slices in the record */
	__u32 sum[TM_MAX_SLICES];
};
/* Frame bytes a sliced record holds at most (trailer excluded). */
#define TM_MAX_SLICED_FRAME 8192
/* Payload bytes summed per helper call (bpf_csum_diff takes at most 512). */
#define TM_SUM_CHUNK 512

/*
 * One ring record: this header (tunnel header last), then cap_len bytes of
 * the frame exactly as on the wire, VLAN tags included. l3_off and l4_off
 * are relative to the start of the frame.
 */
struct tm_record {
	__u64 tstamp_ns; /* bpf_ktime_get_ns() at the hook */
	__u32 ifindex;
	__u32 orig_len;  /* frame length on the wire */
	__u32 cap_len;   /* frame bytes in this record */
	__u32 flow_hash; /* symmetric hash of the inner flow */
	__u16 session;   /* index in the record's bank */
	__u8 bank;
	__u8 direction;  /* enum tm_direction */
	__u8 flags;      /* enum tm_record_flags */
	__u8 l4_proto;   /* IP protocol of the transport header, if any */
	__u16 l3_off;    /* 0 when not IP */
	__u16 l4_off;    /* 0 when no transport header was found */
	__u16 gso_size;  /* skb gso_size at tc, else 0 */
	__u16 gso_segs;  /* skb gso_segs at tc, else 0 */
	/* TM_REC_GSO: the first segment that 1-in-N sampling kept; the next
	 * are every sample_every-th after it (the others are counted
	 * sampled_out already). 0 otherwise. */
	__u16 sample_first;
	__u8 tunnel_hdr[TM_TUNNEL_HDR_LEN];
	/* __u8 frame[cap_len]; */
};

#define TM_RECORD_HDR_LEN 48 /* sizeof(struct tm_record), tunnel header included */

_Static_assert(sizeof(struct tm_record) == TM_RECORD_HDR_LEN, "tm_record layout");
_Static_assert(sizeof(struct tm_slice_trailer) == 8 + 4 * TM_MAX_SLICES, "tm_slice_trailer layout");
_Static_assert(sizeof(struct tm_dest_key) == 20, "tm_dest_key layout");
_Static_assert(sizeof(struct tm_control) == 24, "tm_control layout");
_Static_assert(sizeof(struct tm_slot_key) == 16, "tm_slot_key layout");
_Static_assert(sizeof(struct tm_session) == 96, "tm_session layout");
_Static_assert(sizeof(struct tm_session_usage) == 24, "tm_session_usage layout");

#endif /* TM_ABI_H */
