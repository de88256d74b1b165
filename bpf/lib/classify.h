/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Session selection (SPEC §3) with the bit-vector classifier of tm_abi.h.
 *
 * Cost per packet, whatever the number of rules: three array reads (the
 * protocol's and the ports' classes), two binary searches of at most
 * TM_ADDR_SEARCH_STEPS reads (the addresses' classes), five bitmap reads,
 * then for each session in order an AND of the five bitmaps over those of
 * its words (one per 64 rules) that the bitmaps' summaries leave: the
 * lowest set bit is its first matching rule, and that rule's accept bit
 * decides. Sessions without a filter accept without any lookup.
 */
#ifndef TM_CLASSIFY_H
#define TM_CLASSIFY_H

#include "maps.h"
#include "parse.h"

enum tm_verdict {
	TM_V_NO_MATCH = -1,
	TM_V_REJECTED = -2,
};

/* The five bitmaps of a packet's field values, or none: NULL pointers. */
struct tm_field_bits {
	const struct tm_bits *proto, *sport, *dport, *src, *dst;
};

static __always_inline const struct tm_bits *tm_bits_of(void *bits, __u32 class)
{
	return bpf_map_lookup_elem(bits, &class);
}

static __always_inline __u32 tm_value_class(void *classes, __u32 index)
{
	__u32 key = index / 4;
	__u64 *e = bpf_map_lookup_elem(classes, &key);

	return e ? (__u32)(*e >> ((index % 4) * 16)) & 0xffff : 0;
}

/* The bitmap class of the interval holding the address (hi, lo) among the
 * `count` bounds from `start`: a binary search of at most
 * TM_ADDR_SEARCH_STEPS reads. */
static __always_inline __u32 tm_addr_class(void *bounds, __u32 start, __u32 count, __u64 hi, __u64 lo)
{
	const struct tm_addr_bound *b;
	__u32 low = 0, high, step, key;

	if (!count)
		return 0;
	high = count - 1;
	for (step = 0; step < TM_ADDR_SEARCH_STEPS; step++) {
		__u32 mid;

		if (low >= high)
			break;
		mid = low + (high - low + 1) / 2;
		key = start + mid;
		b = bpf_map_lookup_elem(bounds, &key);
		if (!b)
			return 0;
		if (b->hi < hi || (b->hi == hi && b->lo <= lo))
			low = mid;
		else
			high = mid - 1;
	}
	key = start + low;
	b = bpf_map_lookup_elem(bounds, &key);
	return b ? b->bitmap : 0;
}

static __always_inline __u64 tm_be64(const __u32 *w)
{
	return ((__u64)bpf_ntohl(w[0]) << 32) | bpf_ntohl(w[1]);
}

static __always_inline __u32 tm_addr_field_class(void *bounds, const struct tm_profile *plan,
						 __u32 field, const __u32 *addr, int v4)
{
	__u32 i = (field - TM_FIELD_SRC4) & 3;

	if (v4)
		return tm_addr_class(bounds, plan->addr_start[i], plan->addr_count[i], 0, bpf_ntohl(addr[0]));
	return tm_addr_class(bounds, plan->addr_start[i], plan->addr_count[i], tm_be64(addr),
			     tm_be64(addr + 2));
}

/* Fills `out` with the bitmaps of the packet's fields; NULLs when the
 * profile has no tables (then no rule matches). */
static __always_inline void tm_lookup_fields(__u32 profile, const struct tm_profile *plan,
					    const struct tm_pkt *p, struct tm_field_bits *out)
{
	void *classes = bpf_map_lookup_elem(&tm_value_classes, &profile);
	void *bounds = bpf_map_lookup_elem(&tm_addr_bounds, &profile);
	void *bits = bpf_map_lookup_elem(&tm_class_bits, &profile);
	__u32 sport = (p->flags & TM_PKT_PORTS) ? p->sport : TM_PORT_NONE;
	__u32 dport = (p->flags & TM_PKT_PORTS) ? p->dport : TM_PORT_NONE;
	int v4 = p->family == 4;

	if (!classes || !bounds || !bits)
		return;
	out->proto = tm_bits_of(bits, tm_value_class(classes, TM_CLASS_PROTO + p->proto));
	out->sport = tm_bits_of(bits, tm_value_class(classes, TM_CLASS_SPORT + sport));
	out->dport = tm_bits_of(bits, tm_value_class(classes, TM_CLASS_DPORT + dport));
	out->src = tm_bits_of(bits, tm_addr_field_class(bounds, plan, v4 ? TM_FIELD_SRC4 : TM_FIELD_SRC6,
							p->src, v4));
	out->dst = tm_bits_of(bits, tm_addr_field_class(bounds, plan, v4 ? TM_FIELD_DST4 : TM_FIELD_DST6,
							p->dst, v4));
}

/*
 * The session that mirrors this packet (its index in the bank), or a
 * negative tm_verdict. A global function: the verifier checks it once, on
 * its own, instead of once for every path of the caller that reaches it.
 * Pointer arguments of global functions may be NULL as far as it knows.
 *
 * The plan is looked up here rather than passed in: indexing a map value
 * with a variable is allowed to programs loaded without CAP_PERFMON (the
 * verifier masks the offset against speculation), indexing plain memory
 * passed as an argument is not.
 */
__noinline int tm_classify(__u32 profile, const struct tm_pkt *p)
{
	const struct tm_profile *plan = bpf_map_lookup_elem(&tm_profiles, &profile);
	struct tm_field_bits f = {};
	__u64 cand[TM_RULE_WORDS / 64] = {};
	int verdict = TM_V_NO_MATCH, looked = 0;
	__u32 i, n;
	int ip;

	if (!plan || !p)
		return TM_V_NO_MATCH;
	n = plan->session_count;
	ip = (p->flags & TM_PKT_IP) != 0;
	for (i = 0; i < TM_MAX_SESSIONS_PER_SLOT; i++) {
		__u32 start, count, w;

		if (i >= n)
			break;
		if (!(plan->filtered_mask & (1u << i)))
			return plan->session[i];
		if (!ip)
			continue;
		if (!looked) {
			tm_lookup_fields(profile, plan, p, &f);
			looked = 1;
			if (f.proto && f.sport && f.dport && f.src && f.dst) {
				for (w = 0; w < TM_RULE_WORDS / 64; w++)
					cand[w] = f.proto->nonzero[w] & f.sport->nonzero[w] &
						  f.dport->nonzero[w] & f.src->nonzero[w] &
						  f.dst->nonzero[w];
			}
		}
		if (!f.proto || !f.sport || !f.dport || !f.src || !f.dst)
			continue;
		start = plan->word_start[i];
		count = plan->word_count[i];
		for (w = 0; w < TM_FILTER_WORDS; w++) {
			__u32 idx = start + w;
			__u64 bits, low;

			if (w >= count || idx >= TM_RULE_WORDS)
				break;
			if (!((cand[idx / 64] >> (idx % 64)) & 1))
				continue;
			bits = f.proto->word[idx] & f.sport->word[idx] & f.dport->word[idx] &
			       f.src->word[idx] & f.dst->word[idx];
			if (!bits)
				continue;
			low = bits & (~bits + 1);
			if (low & plan->accept[idx])
				return plan->session[i];
			verdict = TM_V_REJECTED;
			break;
		}
	}
	return verdict;
}

#endif /* TM_CLASSIFY_H */
