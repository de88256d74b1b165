/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Session selection (SPEC §3) with the bit-vector classifier of tm_abi.h.
 *
 * Cost per packet, whatever the number of rules: five longest-prefix
 * lookups (protocol, source port, destination port, source and destination
 * address), one AND over the scope's bitmap words (one word per 64 rules),
 * then for each session in order a look at its own words: the lowest set
 * bit is its first matching rule, and that rule's accept bit decides.
 * Sessions without a filter accept without any lookup.
 */
#ifndef TM_CLASSIFY_H
#define TM_CLASSIFY_H

#include "maps.h"
#include "parse.h"

enum tm_verdict {
	TM_V_NO_MATCH = -1,
	TM_V_REJECTED = -2,
};

static __always_inline struct tm_bits *tm_lookup_field(__u32 scope, __u32 field,
						       const void *value, __u32 bits)
{
	struct tm_lpm_key key = {
		.prefixlen = TM_LPM_FIXED_BITS + bits,
		.scope = scope,
		.field = field,
	};

	__builtin_memcpy(key.value, value, 16);
	return bpf_map_lookup_elem(&tm_rule_lpm, &key);
}

/* AND of the five field bitmaps into the per-CPU scratch; NULL when some
 * field allows no rule at all (then nothing matches). */
static __always_inline struct tm_bits *tm_match_rules(__u32 scope, const struct tm_pkt *p,
						      __u32 words)
{
	struct tm_bits *proto, *sport, *dport, *saddr, *daddr, *out;
	__u32 num[4] = {}, zero = 0, w;
	int v4 = p->family == 4;

	num[0] = bpf_htonl(p->proto);
	proto = tm_lookup_field(scope, TM_FIELD_PROTO, num, 32);
	num[0] = bpf_htonl((p->flags & TM_PKT_PORTS) ? p->sport : TM_PORT_NONE);
	sport = tm_lookup_field(scope, TM_FIELD_SPORT, num, 32);
	num[0] = bpf_htonl((p->flags & TM_PKT_PORTS) ? p->dport : TM_PORT_NONE);
	dport = tm_lookup_field(scope, TM_FIELD_DPORT, num, 32);
	saddr = tm_lookup_field(scope, v4 ? TM_FIELD_SRC4 : TM_FIELD_SRC6, p->src, v4 ? 32 : 128);
	daddr = tm_lookup_field(scope, v4 ? TM_FIELD_DST4 : TM_FIELD_DST6, p->dst, v4 ? 32 : 128);
	out = bpf_map_lookup_elem(&tm_match, &zero);
	if (!proto || !sport || !dport || !saddr || !daddr || !out)
		return NULL;

	for (w = 0; w < TM_RULE_WORDS; w++) {
		if (w >= words)
			break;
		out->word[w] = proto->word[w] & sport->word[w] & dport->word[w] &
			       saddr->word[w] & daddr->word[w];
	}
	return out;
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
__noinline int tm_classify(__u32 scope, const struct tm_pkt *p)
{
	const struct tm_slot_plan *plan = bpf_map_lookup_elem(&tm_slot_plans, &scope);
	struct tm_bits *m = NULL;
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
			m = tm_match_rules(scope, p, plan->word_total);
			looked = 1;
		}
		if (!m)
			continue;
		start = plan->word_start[i];
		count = plan->word_count[i];
		for (w = 0; w < TM_FILTER_WORDS; w++) {
			__u32 idx = start + w;
			__u64 bits, low;

			if (w >= count || idx >= TM_RULE_WORDS)
				break;
			bits = m->word[idx];
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
