/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Symmetric flow hash (SPEC §4.3): both directions of a connection hash the
 * same, so their copies leave with the same outer UDP source port.
 *
 * The two endpoints are put in a canonical order (smaller address first,
 * ports follow their address) and fed as 32-bit words, read in host byte
 * order from their network-order bytes, to the MurmurHash3 x86_32 block
 * and finalizer steps. Fragments hash without ports so every fragment of a
 * datagram travels with its first one. Non-IP frames hash their MAC pair
 * and ethertype. MirrorCore.FlowHash is the same function in Swift.
 */
#ifndef TM_HASH_H
#define TM_HASH_H

#include "parse.h"

#define TM_HASH_SEED 0x746d6972u /* "tmir" */

static __always_inline __u32 tm_rotl(__u32 x, __u32 r)
{
	return (x << r) | (x >> (32 - r));
}

static __always_inline __u32 tm_mix(__u32 h, __u32 k)
{
	k *= 0xcc9e2d51u;
	k = tm_rotl(k, 15);
	k *= 0x1b873593u;
	h ^= k;
	h = tm_rotl(h, 13);
	return h * 5 + 0xe6546b64u;
}

static __always_inline __u32 tm_fmix(__u32 h)
{
	h ^= h >> 16;
	h *= 0x85ebca6bu;
	h ^= h >> 13;
	h *= 0xc2b2ae35u;
	h ^= h >> 16;
	return h;
}

/* -1, 0, 1 as a < b, a == b, a > b over four words. */
static __always_inline int tm_cmp128(const __u32 *a, const __u32 *b)
{
	int i;

	for (i = 0; i < 4; i++) {
		if (a[i] < b[i])
			return -1;
		if (a[i] > b[i])
			return 1;
	}
	return 0;
}

/* A global function, verified once (see tm_classify). */
__noinline __u32 tm_flow_hash(const struct tm_pkt *p)
{
	__u32 h = TM_HASH_SEED;
	const __u32 *lo, *hi;
	__u16 plo = 0, phi = 0;
	int i, c;

	if (!p)
		return 0;
	if (!(p->flags & TM_PKT_IP)) {
		__u32 a[4] = {}, b[4] = {};

		__builtin_memcpy(a, p->smac, ETH_ALEN);
		__builtin_memcpy(b, p->dmac, ETH_ALEN);
		c = tm_cmp128(a, b);
		lo = c <= 0 ? a : b;
		hi = c <= 0 ? b : a;
		h = tm_mix(h, lo[0]);
		h = tm_mix(h, lo[1]);
		h = tm_mix(h, hi[0]);
		h = tm_mix(h, hi[1]);
		h = tm_mix(h, p->eth_proto);
		return tm_fmix(h ^ 20);
	}

	c = tm_cmp128(p->src, p->dst);
	if (c == 0 && (p->flags & TM_PKT_PORTS) && p->sport > p->dport)
		c = 1;
	lo = c <= 0 ? p->src : p->dst;
	hi = c <= 0 ? p->dst : p->src;
	if ((p->flags & TM_PKT_PORTS) && !(p->flags & TM_PKT_FRAGMENT)) {
		plo = c <= 0 ? p->sport : p->dport;
		phi = c <= 0 ? p->dport : p->sport;
	}
	for (i = 0; i < 4; i++)
		h = tm_mix(h, lo[i]);
	for (i = 0; i < 4; i++)
		h = tm_mix(h, hi[i]);
	h = tm_mix(h, ((__u32)plo << 16) | phi);
	h = tm_mix(h, p->proto);
	return tm_fmix(h ^ 40);
}

#endif /* TM_HASH_H */
