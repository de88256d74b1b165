// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * traffic-mirror's kernel side: XDP (ingress) and tc (egress, or ingress
 * where XDP is not wanted) programs that share one select path. Each picks
 * the session that mirrors a packet (SPEC §3), writes the frame as it is on
 * the wire into the CPU's ring buffer behind a record header and the
 * session's tunnel header, and counts every outcome.
 *
 * Observe only: every exit lets the packet continue, unchanged. XDP returns
 * XDP_PASS. tc returns TC_ACT_UNSPEC, which is TCX_NEXT for tcx links: the
 * packet goes on to whatever programs and filters follow ours, exactly as
 * if we were not there (TC_ACT_OK would skip them).
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "tm_abi.h"
#include "lib/maps.h"
#include "lib/parse.h"
#include "lib/hash.h"
#include "lib/classify.h"

/* Backlog at which a record wakes the agent (the loader sets an eighth of
 * the ring). Records are committed without a wakeup otherwise: the agent
 * drains on its own schedule (see Forwarder), and a wakeup per record would
 * cost the hooked CPU an interrupt each. */
const volatile __u64 tm_wake_bytes = 0;

/* Keeps clang from folding a clamp the verifier needs to see. */
#define tm_barrier_var(var) asm volatile("" : "+r"(var))

struct tm_meta {
	__u64 cookie; /* of the skb's socket, 0 when none (always at XDP) */
	/* The interface: its namespace's cookie and ifindex, laid out as the
	 * tm_slots key so the lookup needs no copy on the stack. */
	struct tm_slot_key where;
	__u32 dir;
	__u32 vlan_tags; /* 1 when the skb carries a tag as metadata */
	__u16 vlan_proto; /* network order */
	__u16 vlan_tci;   /* host order */
	__u16 gso_size;
	__u16 gso_segs;
};

/* The parsers as global functions, one per context type, each verified once
 * (see tm_classify). */
__noinline int tm_parse_xdp(struct xdp_md *ctx, struct tm_pkt *p)
{
	struct tm_src src = { .ctx = ctx };

	/* Only `p` may be NULL: a context argument never is, and comparing it
	 * is a pointer comparison the verifier refuses without CAP_PERFMON. */
	if (!p)
		return -1;
	src.len = bpf_xdp_get_buff_len(ctx);
	tm_parse(&src, 1, p, 0);
	return 0;
}

__noinline int tm_parse_skb(struct __sk_buff *skb, struct tm_pkt *p, __u32 tags)
{
	struct tm_src src = { .ctx = skb };

	if (!p)
		return -1;
	src.len = skb->len;
	tm_parse(&src, 0, p, tags);
	return 0;
}

/* Copy the frame as it is on the wire into a record of `room` frame bytes,
 * re-inserting a tag the skb carries as metadata after the MAC addresses. */
static __always_inline int tm_copy(const struct tm_src *src, const int xdp,
				   const struct tm_meta *m, __u8 *frame, __u32 cap,
				   const __u32 room)
{
	__u32 n;

	if (!xdp && m->vlan_tags) {
		__u16 tci = bpf_htons(m->vlan_tci);

		if (tm_load(src, xdp, 0, frame, 12))
			return -1;
		__builtin_memcpy(frame + 12, &m->vlan_proto, 2);
		__builtin_memcpy(frame + 14, &tci, 2);
		if (cap <= 16)
			return 0;
		n = cap - 16;
		tm_barrier_var(n);
		if (n > room - 16)
			n = room - 16;
		if (n == 0)
			return 0;
		return tm_load(src, xdp, 12, frame + 16, n);
	}
	n = cap;
	tm_barrier_var(n);
	if (n > room)
		n = room;
	if (n == 0)
		return 0;
	return tm_load(src, xdp, 0, frame, n);
}

static __always_inline void tm_fill(struct tm_record *r, const struct tm_meta *m,
				    const struct tm_pkt *p, const struct tm_session *s,
				    __u32 session, __u32 bank, __u32 frame_len,
				    __u32 cap, __u32 flags, __u32 first)
{
	/* Offsets past the MAC addresses move with a re-inserted tag. */
	__u32 shift = m->vlan_tags ? 4 : 0;

	r->tstamp_ns = bpf_ktime_get_ns();
	r->ifindex = m->where.ifindex;
	r->orig_len = frame_len;
	r->cap_len = cap;
	r->flow_hash = tm_flow_hash(p);
	r->session = session;
	r->bank = bank;
	r->direction = m->dir;
	r->l4_proto = p->proto < 256 ? p->proto : 0;
	r->l3_off = (p->flags & TM_PKT_IP) ? p->l3_off + shift : 0;
	r->l4_off = (p->flags & TM_PKT_IP) && p->l4_off ? p->l4_off + shift : 0;
	r->gso_size = m->gso_size;
	r->gso_segs = m->gso_segs;
	r->sample_first = (flags & TM_REC_GSO) ? first : 0;
	if (m->vlan_tags)
		flags |= TM_REC_VLAN_INSERTED;
	if (p->flags & TM_PKT_FRAGMENT)
		flags |= TM_REC_FRAGMENT;
	if ((p->flags & TM_PKT_L4_COMPLETE) && p->l4_end + shift <= cap)
		flags |= TM_REC_L4_COMPLETE;
	r->flags = flags;
	__builtin_memcpy(r->tunnel_hdr, s->tunnel_hdr, TM_TUNNEL_HDR_LEN);
}

/* Wake the agent only when this record takes the ring's backlog past the
 * watermark, so a backlog costs one wakeup, not one per record. */
static __always_inline __u64 tm_wakeup(void *ring, __u64 size)
{
	__u64 avail = bpf_ringbuf_query(ring, BPF_RB_AVAIL_DATA);

	return avail >= tm_wake_bytes && avail < tm_wake_bytes + size + 8 ?
		BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
}

/* Reserve a record of the smallest size class that holds `cap` frame bytes:
 * the reserve size must be a constant, and one class per power of two keeps
 * a 64-byte frame from taking a 16 KiB slot of the ring. */
#define TM_EMIT_CLASS(room)                                                        \
	if (cap <= (room)) {                                                       \
		struct tm_record *r =                                              \
			bpf_ringbuf_reserve(ring, TM_RECORD_HDR_LEN + (room), 0);  \
		if (!r)                                                            \
			return TM_SO_DROP_RING_FULL;                               \
		tm_fill(r, m, p, s, session, bank, frame_len, cap, flags, first);  \
		if (tm_copy(src, xdp, m, (__u8 *)(r + 1), cap, (room))) {          \
			bpf_ringbuf_discard(r, 0);                                 \
			return TM_SO_DROP_CAPTURE_ERROR;                           \
		}                                                                  \
		bpf_ringbuf_submit(r, tm_wakeup(ring, TM_RECORD_HDR_LEN + (room)));\
		return 0;                                                          \
	}

/* 0 when the record is in the ring, else the drop outcome. */
static __always_inline int tm_emit(const struct tm_src *src, const int xdp,
				   const struct tm_meta *m, const struct tm_pkt *p,
				   const struct tm_session *s, __u32 session, __u32 bank,
				   __u32 frame_len, __u32 cap, __u32 flags, __u32 first)
{
	__u32 cpu = bpf_get_smp_processor_id();
	void *ring = bpf_map_lookup_elem(&tm_rings, &cpu);

	/* Rings exist for the CPUs online when the agent started. */
	if (!ring)
		return TM_SO_DROP_NO_RING;
	TM_EMIT_CLASS(72)
	TM_EMIT_CLASS(200)
	TM_EMIT_CLASS(456)
	TM_EMIT_CLASS(968)
	TM_EMIT_CLASS(1544)
	TM_EMIT_CLASS(2056)
	TM_EMIT_CLASS(4104)
	TM_EMIT_CLASS(8200)
	TM_EMIT_CLASS(TM_MAX_FRAME)
	TM_EMIT_CLASS(32768)
	TM_EMIT_CLASS(TM_MAX_GSO_FRAME)
	return TM_SO_DROP_CAPTURE_ERROR;
}

/* 1-in-N sampling, per CPU, of the packets the wire carries: the first of
 * every N goes. A GSO super-packet takes `segs` counts at once; returns how
 * many of its segments are kept and sets the index of the first. */
static __always_inline __u32 tm_sample(const struct tm_session *s, __u32 skey, __u32 segs, __u32 *first)
{
	__u64 *n, base;
	__u32 every = s->sample_every, r;

	*first = 0;
	if (every <= 1)
		return segs;
	n = bpf_map_lookup_elem(&tm_sample_count, &skey);
	if (!n)
		return segs;
	base = *n;
	*n = base + segs;
	r = base % every;
	*first = r ? every - r : 0;
	if (*first >= segs)
		return 0;
	return (segs - *first - 1) / every + 1;
}

/* Token bucket in tokens * 1e9 (token-nanoseconds) so refill is exact.
 * `packets` wire packets of `bytes` bytes in all cost packets or bits; the
 * config keeps burst * 1e9 well inside 64 bits (RateLimit.maxBurst). */
static __always_inline int tm_rate_limited(const struct tm_session *s, __u32 skey,
					   __u32 packets, __u32 bytes)
{
	struct tm_rate_state *st;
	__u64 now, cost, cap, tokens, full, elapsed;
	int limited;

	if (!s->rate)
		return 0;
	st = bpf_map_lookup_elem(&tm_rate, &skey);
	if (!st)
		return 0;
	now = bpf_ktime_get_ns();
	cost = (s->rate_bits ? (__u64)bytes * 8 : packets) * 1000000000ULL;
	cap = s->burst * 1000000000ULL;
	/* Past this much idle time the bucket is full; capping the elapsed time
	 * first keeps elapsed * rate from overflowing. */
	full = cap / s->rate + 1;
	bpf_spin_lock(&st->lock);
	elapsed = now > st->last_ns ? now - st->last_ns : 0;
	if (st->last_ns == 0 || elapsed >= full)
		tokens = cap;
	else
		tokens = st->tokens + elapsed * s->rate;
	if (tokens > cap)
		tokens = cap;
	st->last_ns = now;
	limited = tokens < cost;
	if (!limited)
		tokens -= cost;
	st->tokens = tokens;
	bpf_spin_unlock(&st->lock);
	return limited;
}

/* Bytes of headers every segment of a GSO super-packet repeats: up to the
 * end of the TCP header (its data offset) or of the UDP header. */
static __always_inline __u32 tm_segment_headers(const struct tm_src *src, const int xdp,
						const struct tm_pkt *p)
{
	__u8 doff;

	if (!p->l4_off)
		return p->l3_off;
	if (p->proto == IPPROTO_TCP && !tm_load(src, xdp, p->l4_off + 12, &doff, 1))
		return p->l4_off + (doff >> 4) * 4;
	return p->l4_off + 8;
}

/* UDP ports of tunnels whose GSO packets carry an inner segmentation that
 * cutting by the outer UDP payload would get wrong. */
static __always_inline int tm_tunnel_port(__u16 port)
{
	return port == 4789 || port == 6081 || port == 8472 || port == 4790;
}

/* Whether user space can cut this GSO super-packet into its wire segments
 * the way the kernel's GSO will (TCP segmentation, UDP segmentation). */
static __always_inline int tm_segmentable(const struct tm_meta *m, const struct tm_pkt *p)
{
	if (m->gso_segs <= 1 || m->gso_size == 0)
		return 0;
	if (!(p->flags & TM_PKT_L4_COMPLETE))
		return 0;
	if (p->proto == IPPROTO_TCP)
		return 1;
	return p->proto == IPPROTO_UDP && !tm_tunnel_port(p->dport) && !tm_tunnel_port(p->sport);
}

/* What the summing loop needs on the stack (the rest of its state is in
 * tm_slice_scratch: the stack of the hooks is nearly full). */
struct tm_sum_ctx {
	struct __sk_buff *skb;
};

/* One bpf_loop step: up to TM_SUM_CHUNK bytes of one segment, never across
 * two, so every chunk starts at an even offset of its segment and the sums
 * of its chunks add up to the segment's. */
static long tm_sum_step(__u32 idx, void *data)
{
	struct tm_sum_ctx *x = data;
	struct tm_slice_scratch *sc;
	struct tm_sum_loop *c;
	__u32 zero = 0, n, tail;
	__s64 sum;

	sc = bpf_map_lookup_elem(&tm_slice_scratch, &zero);
	if (!sc)
		return 1;
	c = &sc->loop;
	n = c->left < TM_SUM_CHUNK ? c->left : TM_SUM_CHUNK;
	if (n == 0 || n > TM_SUM_CHUNK)
		goto fail;
	/* An odd tail is summed as if padded with zeros, as the checksum is. */
	tail = n & ~3U;
	if ((n & 3) && tail <= TM_SUM_CHUNK - 4)
		*(__u32 *)(sc->chunk + tail) = 0;
	if (bpf_skb_load_bytes(x->skb, c->off, sc->chunk, n))
		goto fail;
	sum = bpf_csum_diff(NULL, 0, (__be32 *)sc->chunk, (n + 3) & ~3U, c->sum);
	if (sum < 0)
		goto fail;
	c->sum = sum;
	c->off += n;
	c->left -= n;
	if (c->left)
		return 0;
	sc->sum[c->done & (TM_MAX_SLICES - 1)] = c->sum;
	c->sum = 0;
	if (++c->done >= c->count)
		return 1;
	c->start += c->stride;
	c->off = c->start;
	if (c->start >= c->end)
		goto fail;
	c->left = c->end - c->start < c->gso ? c->end - c->start : c->gso;
	return 0;
fail:
	c->err = 1;
	return 1;
}

#define TM_NOT_SLICED -1
#define TM_MAX_SUM_STEPS (TM_MAX_GSO_FRAME / TM_SUM_CHUNK + 2 * TM_MAX_SLICES)

/* A TCP/UDP packet (one segment of `gso` payload bytes), or the kept
 * segments of a segmentable GSO super-packet of `gso` payload bytes each,
 * that `limit` cuts: the headers once, the
 * first bytes of each (kept segment's) payload and each payload's sum go
 * into the ring (struct tm_slice_trailer), instead of up to 64 KiB for a
 * super-packet, and so that user space can finish a checksum left for
 * offload in a copy that holds only part of the payload. 0 when the record
 * is in the ring, a drop outcome, or TM_NOT_SLICED when it goes the usual
 * way. tc only. */
static __noinline int tm_emit_sliced(struct __sk_buff *skb, const struct tm_meta *m,
				     const struct tm_pkt *p, const struct tm_session *s,
				     struct tm_slice_scratch *sc)
{
	struct tm_src src_ = { .ctx = skb, .len = skb->len }, *src = &src_;
	struct tm_sum_ctx x = { .skb = skb };
	__u32 limit = sc->args.limit, first = sc->args.first, segs = sc->args.segs, gso = sc->args.gso;
	__u32 shift = m->vlan_tags ? 4 : 0, step, hdr, slice, n, count, cap, size, i;
	struct tm_slice_trailer *t;
	struct tm_sum_loop *c;
	__u32 cpu = bpf_get_smp_processor_id();
	void *ring;

	hdr = tm_segment_headers(src, 0, p);
	if (gso == 0 || hdr + shift + gso <= limit || hdr + shift >= limit || p->l4_end <= hdr)
		return TM_NOT_SLICED;
	step = s->sample_every > 1 && segs > 1 ? s->sample_every : 1;
	n = (p->l4_end - hdr + gso - 1) / gso;
	if (n > segs)
		n = segs;
	if (first >= n)
		return TM_NOT_SLICED;
	count = (n - first + step - 1) / step;
	slice = limit - hdr - shift;
	cap = hdr + shift + count * slice;
	if (count > TM_MAX_SLICES || slice > TM_MAX_SLICED_FRAME || cap > TM_MAX_SLICED_FRAME)
		return TM_NOT_SLICED;

	c = &sc->loop;
	c->start = hdr + first * gso;
	c->off = c->start;
	c->end = p->l4_end;
	c->gso = gso;
	c->left = c->end - c->start < gso ? c->end - c->start : gso;
	c->stride = step * gso;
	c->count = count;
	c->done = 0;
	c->sum = 0;
	c->err = 0;
	bpf_loop(TM_MAX_SUM_STEPS, tm_sum_step, &x, 0);
	if (c->err || c->done != count)
		return TM_SO_DROP_CAPTURE_ERROR;

	tm_fill(&sc->rec, m, p, s, sc->args.session, sc->args.bank, sc->args.frame_len, cap,
		sc->args.flags | TM_REC_SLICED, first);
	if (tm_copy(src, 0, m, sc->frame, hdr + shift, TM_MAX_SLICED_FRAME))
		return TM_SO_DROP_CAPTURE_ERROR;
	size = (cap + 3) & ~3U;
	tm_barrier_var(size);
	if (size > TM_MAX_SLICED_FRAME)
		return TM_SO_DROP_CAPTURE_ERROR;
	t = (struct tm_slice_trailer *)(sc->frame + size);
	t->slice_len = slice;
	t->count = count;
	for (i = 0; i < TM_MAX_SLICES; i++) {
		__u32 off = hdr + (first + i * step) * gso, pos, len;

		if (i >= count)
			break;
		t->sum[i] = sc->sum[i];
		len = p->l4_end - off < slice ? p->l4_end - off : slice;
		pos = hdr + shift + i * slice;
		tm_barrier_var(pos);
		tm_barrier_var(len);
		if (pos > TM_MAX_SLICED_FRAME || len > TM_MAX_SLICED_FRAME)
			return TM_SO_DROP_CAPTURE_ERROR;
		if (len && bpf_skb_load_bytes(src->ctx, off, sc->frame + pos, len))
			return TM_SO_DROP_CAPTURE_ERROR;
	}
	size += TM_RECORD_HDR_LEN + 8 + 4 * count;
	tm_barrier_var(size);
	if (size > sizeof(sc->rec) + sizeof(sc->frame))
		return TM_SO_DROP_CAPTURE_ERROR;
	ring = bpf_map_lookup_elem(&tm_rings, &cpu);
	if (!ring)
		return TM_SO_DROP_NO_RING;
	if (bpf_ringbuf_output(ring, &sc->rec, size, tm_wakeup(ring, size)))
		return TM_SO_DROP_RING_FULL;
	if (sc->args.flags & TM_REC_GSO)
		sc->sliced_gso++;
	return 0;
}

/* tm_emit_sliced's arguments go through the scratch map: the hooks' stack
 * has no room for them. */
static __always_inline int tm_slice(const struct tm_src *src, const struct tm_meta *m,
				    const struct tm_pkt *p, const struct tm_session *s,
				    __u32 session, __u32 bank, __u32 frame_len, __u32 limit,
				    __u32 first, __u32 segs, __u32 gso, __u32 flags)
{
	__u32 zero = 0;
	struct tm_slice_scratch *sc = bpf_map_lookup_elem(&tm_slice_scratch, &zero);

	if (!sc)
		return TM_SO_DROP_CAPTURE_ERROR;
	sc->args.session = session;
	sc->args.bank = bank;
	sc->args.frame_len = frame_len;
	sc->args.limit = limit;
	sc->args.first = first;
	sc->args.segs = segs;
	sc->args.gso = gso;
	sc->args.flags = flags;
	return tm_emit_sliced(src->ctx, m, p, s, sc);
}

static __always_inline void tm_dest_of(const struct tm_pkt *p, struct tm_dest_key *k)
{
	__builtin_memcpy(k->addr, p->dst, sizeof(k->addr));
	k->port = p->dport;
	k->family = p->family;
	k->pad = 0;
}

/* Whether bit `port` of a port bitmap is set; `set` sets it first. */
static __always_inline int tm_port_bit(void *map, __u16 port, int set)
{
	__u32 word = port / 64;
	__u64 bit = 1ULL << (port % 64), *w = bpf_map_lookup_elem(map, &word);

	if (!w)
		return 0;
	if (set)
		__sync_fetch_and_or(w, bit);
	return (*w & bit) != 0;
}

static __always_inline int tm_own_dest(const struct tm_dest_key *k)
{
	if (!tm_port_bit(&tm_own_ports, k->port, 0) && !tm_port_bit(&tm_seen_ports, k->port, 0))
		return 0;
	return bpf_map_lookup_elem(&tm_own_dests, k) || bpf_map_lookup_elem(&tm_own_seen, k);
}

/* Whether an ICMP/ICMPv6 error quotes a UDP packet to one of the agent's
 * targets: the host's answer to a copy (a target not listening, a route
 * gone). Mirrored, it would draw another answer, and so on forever. */
static __always_inline int tm_own_icmp_error(const struct tm_src *src, const int xdp,
					     const struct tm_pkt *p)
{
	struct tm_dest_key k = {};
	__u8 h[8];
	__u32 at = p->l4_off + 8; /* the quoted packet */
	__be16 port;

	if (p->flags & TM_PKT_NONFIRST)
		return 0;
	if (tm_load(src, xdp, p->l4_off, h, 1))
		return 0;
	if (p->proto == IPPROTO_ICMP) {
		struct iphdr ip;

		if (h[0] != 3 && h[0] != 4 && h[0] != 5 && h[0] != 11 && h[0] != 12)
			return 0;
		if (tm_load(src, xdp, at, &ip, sizeof(ip)) || ip.version != 4 || ip.protocol != IPPROTO_UDP)
			return 0;
		if (tm_load(src, xdp, at + ip.ihl * 4 + 2, &port, 2))
			return 0;
		k.addr[0] = ip.daddr;
		k.family = 4;
	} else if (p->proto == IPPROTO_ICMPV6) {
		struct ipv6hdr ip6;

		if (h[0] < 1 || h[0] > 4)
			return 0;
		if (tm_load(src, xdp, at, &ip6, sizeof(ip6)) || ip6.nexthdr != IPPROTO_UDP)
			return 0;
		if (tm_load(src, xdp, at + sizeof(ip6) + 2, &port, 2))
			return 0;
		__builtin_memcpy(k.addr, &ip6.daddr, sizeof(k.addr));
		k.family = 6;
	} else {
		return 0;
	}
	k.port = bpf_ntohs(port);
	return tm_own_dest(&k);
}

/* Whether the packet is the agent's own output (see tm_abi.h): sent by one
 * of its sockets, UDP toward one of its targets, or an ICMP error about
 * such a packet. An egress hook that sees the agent's socket learns the
 * destination as netfilter left it, for the ingress hooks that see the
 * packet again without its socket (loopback). */
static __always_inline int tm_own(const struct tm_src *src, const int xdp,
				  const struct tm_meta *m, const struct tm_pkt *p)
{
	struct tm_dest_key k;
	__u32 one = 1;

	if (!(p->flags & TM_PKT_IP))
		return 0;
	if (m->cookie && bpf_map_lookup_elem(&tm_own_sockets, &m->cookie)) {
		if ((p->flags & TM_PKT_PORTS) && p->proto == IPPROTO_UDP && m->dir == TM_DIR_EGRESS) {
			tm_dest_of(p, &k);
			if (!bpf_map_lookup_elem(&tm_own_seen, &k)) {
				bpf_map_update_elem(&tm_own_seen, &k, &one, BPF_ANY);
				tm_port_bit(&tm_seen_ports, p->dport, 1);
			}
		}
		return 1;
	}
	if ((p->flags & TM_PKT_PORTS) && p->proto == IPPROTO_UDP) {
		tm_dest_of(p, &k);
		return tm_own_dest(&k);
	}
	if (p->proto == IPPROTO_ICMP || p->proto == IPPROTO_ICMPV6)
		return tm_own_icmp_error(src, xdp, p);
	return 0;
}

/* Whether bounded session `s` may select a packet of `segs` wire packets
 * and `bytes` frame bytes now: inside its window, and within its limits
 * across all CPUs. A packet that does not fit a limit is not selected and
 * ends the session (later ones are refused at once), so the session mirrors
 * exactly max_packets packets of one segment each (the duplicates it holds
 * back are selected, not counted here). Not inlined: the hooks'
 * stack has no room for it. */
static __noinline int tm_session_open(const struct tm_session *s, __u32 segs, __u32 bytes)
{
	struct tm_session_usage *u;
	__u64 now = bpf_ktime_get_ns(), old;
	__u32 slot = s->usage_slot;

	if (now < s->start_ns || now >= s->stop_ns)
		return 0;
	if (!s->max_packets && !s->max_bytes)
		return 1;
	u = bpf_map_lookup_elem(&tm_session_usage, &slot);
	if (!u)
		return 1;
	if (u->ended)
		return 0;
	if (s->max_packets) {
		old = __sync_fetch_and_add(&u->packets, segs);
		if (old + segs > s->max_packets) {
			__sync_fetch_and_add(&u->packets, -(__s64)segs);
			__sync_fetch_and_or(&u->ended, TM_END_MAX_PACKETS);
			return 0;
		}
	}
	if (s->max_bytes) {
		old = __sync_fetch_and_add(&u->bytes, bytes);
		if (old + bytes > s->max_bytes) {
			__sync_fetch_and_add(&u->bytes, -(__s64)bytes);
			if (s->max_packets)
				__sync_fetch_and_add(&u->packets, -(__s64)segs);
			__sync_fetch_and_or(&u->ended, TM_END_MAX_BYTES);
			return 0;
		}
	}
	return 1;
}

/* Whether bounded session `s` may still select: inside its window and not
 * ended. Unlike tm_session_open, it uses up nothing. */
static __noinline int tm_session_live(const struct tm_session *s)
{
	struct tm_session_usage *u;
	__u64 now = bpf_ktime_get_ns();
	__u32 slot = s->usage_slot;

	if (now < s->start_ns || now >= s->stop_ns)
		return 0;
	u = bpf_map_lookup_elem(&tm_session_usage, &slot);
	return !u || !u->ended;
}

/* The end of the headers of the layer a session slices after, plus its
 * bytes; the fixed fallback for a frame without that layer. */
static __always_inline __u32 tm_layer_limit(const struct tm_src *src, const int xdp,
					    const struct tm_pkt *p, const struct tm_session *s,
					    __u32 shift)
{
	__u32 end;

	if (!(p->flags & TM_PKT_IP) || !p->l4_off)
		return s->length_limit;
	if (s->slice_after == TM_SLICE_L3)
		end = p->l4_off;
	else if (p->flags & TM_PKT_NONFIRST)
		return s->length_limit;
	else if (p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP)
		end = tm_segment_headers(src, xdp, p);
	else if (p->proto == IPPROTO_ICMP || p->proto == IPPROTO_ICMPV6)
		end = p->l4_off + 8;
	else
		return s->length_limit;
	return end + shift + s->slice_bytes;
}

static __noinline __u32 tm_layer_limit_skb(const struct tm_src *src, const struct tm_pkt *p,
					   const struct tm_session *s, __u32 shift)
{
	return tm_layer_limit(src, 0, p, s, shift);
}

static __noinline __u32 tm_layer_limit_xdp(const struct tm_src *src, const struct tm_pkt *p,
					   const struct tm_session *s)
{
	return tm_layer_limit(src, 1, p, s, 0);
}

/* The deduplication key: a hash of what forwarding leaves alone — the IP
 * header's first 8 bytes (IPv4: version, TOS, length, ID, fragment; IPv6:
 * version, class, flow label, payload length, next header: not the hop
 * limit), the addresses, and the first 16 bytes of the transport header
 * (TCP: ports, sequence, acknowledgement, flags, window; UDP: ports, length,
 * checksum and 8 payload bytes; ICMP: type, code, checksum, id, sequence and
 * 8 more), and the session: one session's sighting never holds back
 * another's copy. Not the MACs, VLAN tags, TTL or IPv4 header checksum. */
static __always_inline __u64 tm_dedup_key(const struct tm_src *src, const int xdp,
					  const struct tm_pkt *p, __u32 session)
{
	__u64 w[4] = {}, h = 0x746d697264757021ULL;
	int i;

	if (tm_load(src, xdp, p->l3_off, &w[0], 8))
		return 0;
	if (p->family == 6)
		w[0] &= bpf_cpu_to_be64(0xFFFFFFFFFFFFFF00ULL);
	if (p->l4_off && !(p->flags & TM_PKT_NONFIRST))
		tm_load(src, xdp, p->l4_off, &w[1], 16);
	w[3] = p->family | (__u64)session << 8;
#pragma unroll
	for (i = 0; i < 4; i++)
		h = (h ^ w[i]) * 0x9E3779B97F4A7C15ULL;
#pragma unroll
	for (i = 0; i < 4; i++) {
		__u64 a = (__u64)p->src[i] << 32 | p->dst[i];

		h = (h ^ a) * 0x9E3779B97F4A7C15ULL;
		h ^= h >> 29;
	}
	return h;
}

/* Whether session `session` saw the packet on another mirrored interface
 * or direction (`where`) within `window` ns: the copy is held back.
 * Otherwise this sighting is remembered. */
static __always_inline int tm_duplicate(const struct tm_src *src, const int xdp,
					const struct tm_pkt *p, __u32 where, __u64 window,
					__u32 session)
{
	struct tm_dedup_seen *e, v = {};
	__u64 key, now;

	if (!(p->flags & TM_PKT_IP))
		return 0;
	key = tm_dedup_key(src, xdp, p, session);
	now = bpf_ktime_get_ns();
	e = bpf_map_lookup_elem(&tm_dedup, &key);
	if (e && e->where != where && now - e->seen_ns < window)
		return 1;
	v.seen_ns = now;
	v.where = where;
	bpf_map_update_elem(&tm_dedup, &key, &v, BPF_ANY);
	return 0;
}

static __noinline int tm_duplicate_skb(const struct tm_src *src, const struct tm_pkt *p, __u32 where,
				       __u64 window, __u32 session)
{
	return tm_duplicate(src, 0, p, where, window, session);
}

static __noinline int tm_duplicate_xdp(const struct tm_src *src, const struct tm_pkt *p, __u32 where,
				       __u64 window, __u32 session)
{
	return tm_duplicate(src, 1, p, where, window, session);
}

/* tm_own, out of line: its headers and keys would take the hooks' stack. */
static __noinline int tm_own_skb(const struct tm_src *src, const struct tm_meta *m, const struct tm_pkt *p)
{
	return tm_own(src, 0, m, p);
}

static __noinline int tm_own_xdp(const struct tm_src *src, const struct tm_meta *m, const struct tm_pkt *p)
{
	return tm_own(src, 1, m, p);
}

static __always_inline void tm_mirror(const struct tm_src *src, const int xdp,
				      struct tm_meta *m)
{
	struct tm_pkt pkt = {}, *p = &pkt;
	struct tm_if_counters *ic;
	struct tm_session_counters *sc;
	struct tm_control *ctl;
	struct tm_session *s;
	__u32 zero = 0, *slotp, *profile, slot, key, bank, scope, session, skey;
	__u32 frame_len, cap, limit, length, reason, flags = 0, segs, taken, first, wire;
	int sid, drop;

	slotp = bpf_map_lookup_elem(&tm_slots, &m->where);
	if (!slotp)
		return;
	slot = *slotp;
	if (slot >= TM_MAX_SLOTS)
		return;
	key = slot * TM_DIR_COUNT + m->dir;
	ic = bpf_map_lookup_elem(&tm_if_stats, &key);
	if (!ic)
		return;

	if (xdp)
		tm_parse_xdp(src->ctx, p);
	else
		tm_parse_skb(src->ctx, p, m->vlan_tags);
	/* A GSO packet from an untrusted source (a packet socket's or a VM's
	 * virtio-net header, SKB_GSO_DODGY) learns its segment count only when
	 * it is cut: count it from the payload and the segment size. */
	if (m->gso_size && m->gso_segs == 0 && (p->flags & TM_PKT_L4_COMPLETE)) {
		__u32 hdr = tm_segment_headers(src, xdp, p);

		if (p->l4_end > hdr)
			m->gso_segs = (p->l4_end - hdr + m->gso_size - 1) / m->gso_size;
	}
	/* Counted as the packets the wire carries: a GSO super-packet is the
	 * gso_segs segments it becomes. */
	segs = m->gso_segs > 1 ? m->gso_segs : 1;
	ic->count[TM_IO_SEEN] += segs;

	ctl = bpf_map_lookup_elem(&tm_control, &zero);
	if (!ctl)
		goto no_match;
	bank = ctl->active_bank & 1;
	scope = TM_SCOPE(bank, slot, m->dir);

	if (xdp ? tm_own_xdp(src, m, p) : tm_own_skb(src, m, p)) {
		ic->count[TM_IO_OWN_TRAFFIC] += segs;
		return;
	}
	if (p->flags & TM_PKT_MALFORMED)
		ic->count[TM_IO_MALFORMED_IP] += segs;
	if (p->flags & TM_PKT_L4_TRUNCATED)
		ic->count[TM_IO_L4_TRUNCATED] += segs;

	profile = bpf_map_lookup_elem(&tm_scope_profiles, &scope);
	if (!profile)
		goto no_match;
	sid = tm_classify(*profile, p);
	if (sid == TM_V_REJECTED) {
		ic->count[TM_IO_REJECTED] += segs;
		return;
	}
	if (sid < 0 || sid >= TM_MAX_SESSIONS)
		goto no_match;
	session = sid;
	skey = bank * TM_MAX_SESSIONS + session;
	s = bpf_map_lookup_elem(&tm_sessions, &skey);
	key = skey * TM_DIR_COUNT + m->dir;
	sc = bpf_map_lookup_elem(&tm_session_stats, &key);
	if (!s || !sc)
		goto no_match;
	frame_len = src->len + (m->vlan_tags ? 4 : 0);
	/* Outside its window or ended a session selects nothing, and
	 * remembers nothing for deduplication. A duplicate is held back
	 * before the limits see it: they count what the session mirrors. */
	if ((s->flags & TM_SESSION_BOUNDED) && !tm_session_live(s))
		goto no_match;
	if (s->dedup_window_ns &&
	    (xdp ? tm_duplicate_xdp(src, p, slot * TM_DIR_COUNT + m->dir, s->dedup_window_ns, session) :
		   tm_duplicate_skb(src, p, slot * TM_DIR_COUNT + m->dir, s->dedup_window_ns, session))) {
		ic->count[TM_IO_SELECTED] += segs;
		sc->count[TM_SO_SELECTED] += segs;
		sc->count[TM_SO_DROP_DUPLICATE] += segs;
		return;
	}
	/* Past its limits a session selects nothing. */
	if ((s->flags & TM_SESSION_BOUNDED) && !tm_session_open(s, segs, frame_len))
		goto no_match;
	ic->count[TM_IO_SELECTED] += segs;
	sc->count[TM_SO_SELECTED] += segs;

	taken = tm_sample(s, skey, segs, &first);
	if (taken < segs)
		sc->count[TM_SO_DROP_SAMPLED_OUT] += segs - taken;
	if (!taken)
		return;
	/* What the kept segments weigh on the wire: each carries the headers. */
	wire = frame_len;
	if (segs > 1) {
		__u32 seg = tm_segment_headers(src, xdp, p) + m->gso_size;

		wire = frame_len + (segs - 1) * (seg - m->gso_size);
		if (taken < segs && taken * seg < wire)
			wire = taken * seg;
	}
	if (tm_rate_limited(s, skey, taken, wire)) {
		sc->count[TM_SO_DROP_RATE_LIMITED] += taken;
		return;
	}

	/* The tightest limit cuts the copy and names the reason; on a tie
	 * the one the user asked for (packet_length) wins. */
	limit = TM_MAX_FRAME;
	reason = TM_SO_TRUNCATED_MAX;
	if (s->mtu_limit && s->mtu_limit <= limit) {
		limit = s->mtu_limit;
		reason = TM_SO_TRUNCATED_MTU;
	}
	length = s->length_limit;
	if (s->slice_after)
		length = xdp ? tm_layer_limit_xdp(src, p, s) :
			       tm_layer_limit_skb(src, p, s, m->vlan_tags ? 4 : 0);
	if (length && length <= limit) {
		limit = length;
		reason = TM_SO_TRUNCATED_LENGTH;
	}
	if (segs > 1 && tm_segmentable(m, p)) {
		/* Cut by the limit in the kernel, or whole for user space to
		 * cut; either way user space applies the limits per segment. */
		drop = TM_NOT_SLICED;
		if (!xdp && reason != TM_SO_TRUNCATED_MAX)
			drop = tm_slice(src, m, p, s, session, bank, frame_len, limit, first, segs,
					m->gso_size, TM_REC_GSO);
		flags = TM_REC_GSO;
		reason = 0;
		if (drop != TM_NOT_SLICED)
			goto emitted;
		cap = frame_len < TM_MAX_GSO_FRAME ? frame_len : TM_MAX_GSO_FRAME;
	} else {
		cap = frame_len;
		if (cap > limit) {
			cap = limit;
			flags = reason == TM_SO_TRUNCATED_LENGTH ? TM_REC_TRUNC_LENGTH :
				reason == TM_SO_TRUNCATED_MTU	 ? TM_REC_TRUNC_MTU :
								   TM_REC_TRUNC_MAX;
			/* A whole TCP/UDP packet cut short: with its payload's
			 * sum, for a checksum left for offload. */
			if (!xdp && reason != TM_SO_TRUNCATED_MAX && segs == 1 &&
			    (p->flags & TM_PKT_L4_COMPLETE) && !(p->flags & TM_PKT_FRAGMENT) &&
			    (p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP)) {
				__u32 hdr = tm_segment_headers(src, 0, p);

				drop = p->l4_end > hdr ?
					tm_slice(src, m, p, s, session, bank, frame_len, limit,
						 0, 1, p->l4_end - hdr, flags) :
					TM_NOT_SLICED;
				if (drop != TM_NOT_SLICED)
					goto emitted;
			}
		} else {
			reason = 0;
		}
	}

	drop = tm_emit(src, xdp, m, p, s, session, bank, frame_len, cap, flags, first);
emitted:
	if (drop) {
		if (drop == TM_SO_DROP_RING_FULL)
			sc->count[TM_SO_DROP_RING_FULL] += taken;
		else if (drop == TM_SO_DROP_NO_RING)
			sc->count[TM_SO_DROP_NO_RING] += taken;
		else
			sc->count[TM_SO_DROP_CAPTURE_ERROR] += taken;
		return;
	}
	if (segs > 1 && !(flags & TM_REC_GSO)) {
		/* One truncated copy stands for the first kept segment. */
		sc->count[TM_SO_DROP_GSO_UNSEGMENTED] += taken - 1;
	}
	if (reason == TM_SO_TRUNCATED_LENGTH)
		sc->count[TM_SO_TRUNCATED_LENGTH]++;
	else if (reason == TM_SO_TRUNCATED_MTU)
		sc->count[TM_SO_TRUNCATED_MTU]++;
	else if (reason == TM_SO_TRUNCATED_MAX)
		sc->count[TM_SO_TRUNCATED_MAX]++;
	return;

no_match:
	ic->count[TM_IO_NO_MATCH] += segs;
}

/* The namespace of the interface a packet crosses, read from the device:
 * dev->nd_net.net->net_cookie, the value SO_NETNS_COOKIE gives the agent.
 * Not bpf_get_netns_cookie(): XDP may not call it, and at tc it answers
 * with the namespace of the skb's socket (init_net when there is none),
 * which is not the interface's. The declarations name only the fields
 * read; libbpf relocates their offsets against the running kernel's BTF
 * (CO-RE). */
struct net {
	__u64 net_cookie;
} __attribute__((preserve_access_index));
struct net_device {
	struct {
		struct net *net;
	} nd_net;
} __attribute__((preserve_access_index));
struct xdp_rxq_info {
	struct net_device *dev;
} __attribute__((preserve_access_index));
struct xdp_buff {
	struct xdp_rxq_info *rxq;
} __attribute__((preserve_access_index));
struct sk_buff {
	struct net_device *dev;
} __attribute__((preserve_access_index));
extern void *bpf_cast_to_kern_ctx(void *) __ksym;

static __always_inline __u64 tm_xdp_netns(struct xdp_md *ctx)
{
	struct xdp_buff *xdp = bpf_cast_to_kern_ctx(ctx);

	return xdp->rxq->dev->nd_net.net->net_cookie;
}

static __always_inline __u64 tm_skb_netns(struct __sk_buff *ctx)
{
	struct sk_buff *skb = bpf_cast_to_kern_ctx(ctx);

	return skb->dev->nd_net.net->net_cookie;
}

SEC("xdp.frags")
int tm_xdp_ingress(struct xdp_md *ctx)
{
	struct tm_src src = { .ctx = ctx, .len = bpf_xdp_get_buff_len(ctx) };
	struct tm_meta m = {
		.where = { .netns = tm_xdp_netns(ctx), .ifindex = ctx->ingress_ifindex },
		.dir = TM_DIR_INGRESS,
	};

	tm_mirror(&src, 1, &m);
	return XDP_PASS;
}

static __always_inline void tm_tc(struct __sk_buff *skb, __u32 dir)
{
	struct tm_src src = { .ctx = skb, .len = skb->len };
	struct tm_meta m = {
		.where = { .netns = tm_skb_netns(skb), .ifindex = skb->ifindex },
		.cookie = bpf_get_socket_cookie(skb),
		.dir = dir,
		.vlan_tags = skb->vlan_present ? 1 : 0,
		.vlan_proto = skb->vlan_proto,
		.vlan_tci = skb->vlan_tci,
		.gso_size = skb->gso_size,
		.gso_segs = skb->gso_segs,
	};

	tm_mirror(&src, 0, &m);
}

SEC("tc")
int tm_tc_egress(struct __sk_buff *skb)
{
	tm_tc(skb, TM_DIR_EGRESS);
	return TC_ACT_UNSPEC;
}

SEC("tc")
int tm_tc_ingress(struct __sk_buff *skb)
{
	tm_tc(skb, TM_DIR_INGRESS);
	return TC_ACT_UNSPEC;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
