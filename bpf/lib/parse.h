/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Bounded header parsers shared by the XDP and tc hooks.
 *
 * Headers are read with bpf_xdp_load_bytes / bpf_skb_load_bytes into stack
 * copies instead of direct packet access: the same code then works on
 * non-linear skbs and multi-buffer XDP frames, where a header can sit past
 * the linear part, and it never has to pull (and so change) the skb. Every
 * read names its offset and size; a failed read is a short packet.
 *
 * The semantics here are the contract of SPEC §3 and are mirrored line by
 * line by MirrorCore's reference parser (Sources/MirrorCore/Packet/).
 */
#ifndef TM_PARSE_H
#define TM_PARSE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "../tm_abi.h"

#ifndef ETH_P_8021Q
#define ETH_P_8021Q 0x8100
#endif
#ifndef ETH_P_8021AD
#define ETH_P_8021AD 0x88A8
#endif

/* Where the bytes come from: an XDP buffer or an skb. `xdp` is a constant
 * in every inlined copy, so each program keeps only its own helper. */
struct tm_src {
	void *ctx;
	__u32 len; /* whole packet, linear part and fragments */
};

static __always_inline int tm_load(const struct tm_src *src, const int xdp,
				   __u32 off, void *dst, __u32 len)
{
	if (xdp)
		return bpf_xdp_load_bytes(src->ctx, off, dst, len);
	return bpf_skb_load_bytes(src->ctx, off, dst, len);
}

enum tm_pkt_flags {
	TM_PKT_IP = 1 << 0,           /* IPv4/IPv6 header parsed and sane */
	TM_PKT_MALFORMED = 1 << 1,    /* IP ethertype, header unusable */
	TM_PKT_FRAGMENT = 1 << 2,     /* any IP fragment */
	TM_PKT_NONFIRST = 1 << 3,     /* fragment with offset > 0 */
	TM_PKT_PORTS = 1 << 4,        /* sport/dport valid */
	TM_PKT_L4_TRUNCATED = 1 << 5, /* TCP/UDP header cut short */
	TM_PKT_L4_COMPLETE = 1 << 6,  /* whole TCP/UDP segment inside the frame */
};

struct tm_pkt {
	__u32 src[4];  /* network order; IPv4 in src[0] */
	__u32 dst[4];
	__u8 smac[ETH_ALEN];
	__u8 dmac[ETH_ALEN];
	__u16 l3_off;
	__u16 l4_off;
	__u16 l4_end;  /* end of the IP payload */
	__u16 sport;   /* host order */
	__u16 dport;
	__u16 proto;   /* 0..255, or TM_PROTO_UNKNOWN */
	__u16 eth_proto; /* network order, after the VLAN tags */
	__u8 family;   /* 4, 6, or 0 */
	__u8 flags;    /* enum tm_pkt_flags */
};

struct tm_vlan_hdr {
	__be16 tci;
	__be16 encap_proto;
};

/* Ports of a TCP or UDP header at l4_off, if the header is whole. */
static __always_inline void tm_parse_ports(const struct tm_src *src, const int xdp,
					   struct tm_pkt *p)
{
	__u32 need;
	__be16 ports[2];

	if (p->flags & TM_PKT_NONFIRST)
		return;
	if (p->proto == IPPROTO_TCP)
		need = 20;
	else if (p->proto == IPPROTO_UDP)
		need = 8;
	else
		return;
	if ((__u32)p->l4_off + need > p->l4_end ||
	    tm_load(src, xdp, p->l4_off, ports, sizeof(ports))) {
		p->flags |= TM_PKT_L4_TRUNCATED;
		return;
	}
	p->sport = bpf_ntohs(ports[0]);
	p->dport = bpf_ntohs(ports[1]);
	p->flags |= TM_PKT_PORTS;
	if (!(p->flags & TM_PKT_FRAGMENT))
		p->flags |= TM_PKT_L4_COMPLETE;
}

static __always_inline void tm_parse_ipv4(const struct tm_src *src, const int xdp,
					  struct tm_pkt *p, __u32 off)
{
	struct iphdr ip;
	__u32 hlen, tot;
	__u16 frag;

	if (tm_load(src, xdp, off, &ip, sizeof(ip)) || ip.version != 4 || ip.ihl < 5)
		goto malformed;
	hlen = ip.ihl * 4;
	tot = bpf_ntohs(ip.tot_len);
	/* A total length below the header or beyond the frame is a lie. */
	if (tot < hlen || off + tot > src->len)
		goto malformed;
	p->family = 4;
	p->flags |= TM_PKT_IP;
	p->src[0] = ip.saddr;
	p->dst[0] = ip.daddr;
	p->proto = ip.protocol;
	p->l3_off = off;
	p->l4_off = off + hlen;
	p->l4_end = off + tot;
	frag = bpf_ntohs(ip.frag_off);
	if (frag & 0x3fff) /* MF or an offset */
		p->flags |= TM_PKT_FRAGMENT;
	if (frag & 0x1fff)
		p->flags |= TM_PKT_NONFIRST;
	tm_parse_ports(src, xdp, p);
	return;
malformed:
	p->flags |= TM_PKT_MALFORMED;
}

static __always_inline void tm_parse_ipv6(const struct tm_src *src, const int xdp,
					  struct tm_pkt *p, __u32 off)
{
	struct ipv6hdr ip6;
	__u32 cur, end;
	__u8 next;
	int i;

	if (tm_load(src, xdp, off, &ip6, sizeof(ip6)) || ip6.version != 6)
		goto malformed;
	end = off + sizeof(ip6) + bpf_ntohs(ip6.payload_len);
	if (end > src->len)
		goto malformed;
	p->family = 6;
	p->flags |= TM_PKT_IP;
	__builtin_memcpy(p->src, &ip6.saddr, 16);
	__builtin_memcpy(p->dst, &ip6.daddr, 16);
	p->l3_off = off;
	p->l4_end = end;
	next = ip6.nexthdr;
	cur = off + sizeof(ip6);

	/* Walk the extension headers to the transport header, at most
	 * TM_MAX_EXT_HEADERS of them. */
	for (i = 0; i < TM_MAX_EXT_HEADERS; i++) {
		__u8 hdr[8];

		switch (next) {
		case IPPROTO_HOPOPTS:
		case IPPROTO_ROUTING:
		case IPPROTO_DSTOPTS:
		case 135: /* Mobility */
		case 139: /* HIP */
		case 140: /* Shim6 */
			if (cur + 8 > end || tm_load(src, xdp, cur, hdr, 2))
				goto unknown;
			next = hdr[0];
			cur += (hdr[1] + 1) * 8;
			break;
		case IPPROTO_AH:
			if (cur + 8 > end || tm_load(src, xdp, cur, hdr, 2))
				goto unknown;
			next = hdr[0];
			cur += (hdr[1] + 2) * 4;
			break;
		case IPPROTO_FRAGMENT:
			if (cur + 8 > end || tm_load(src, xdp, cur, hdr, 8))
				goto unknown;
			next = hdr[0];
			cur += 8;
			p->flags |= TM_PKT_FRAGMENT;
			/* Offset in the upper 13 bits of bytes 2-3. */
			if (((hdr[2] << 8) | hdr[3]) & 0xfff8) {
				/* The rest is payload: the protocol is known,
				 * the ports are not. */
				p->flags |= TM_PKT_NONFIRST;
				p->proto = next;
				p->l4_off = cur;
				return;
			}
			break;
		default:
			p->proto = next;
			p->l4_off = cur;
			tm_parse_ports(src, xdp, p);
			return;
		}
	}
unknown:
	/* Chain too long or cut short: no transport header to match on. */
	p->proto = TM_PROTO_UNKNOWN;
	return;
malformed:
	p->flags |= TM_PKT_MALFORMED;
}

/*
 * Parse a frame. `tags` is the number of VLAN tags already taken off the
 * frame and carried as skb metadata (0 or 1); they count toward the limit.
 * On return p->flags says what was found.
 */
static __always_inline void tm_parse(const struct tm_src *src, const int xdp,
				     struct tm_pkt *p, __u32 tags)
{
	struct ethhdr eth;
	__u32 off = sizeof(eth);
	__u16 proto;
	int i;

	if (tm_load(src, xdp, 0, &eth, sizeof(eth)))
		return;
	__builtin_memcpy(p->dmac, eth.h_dest, ETH_ALEN);
	__builtin_memcpy(p->smac, eth.h_source, ETH_ALEN);
	proto = eth.h_proto;

	for (i = 0; i < TM_MAX_VLAN_DEPTH; i++) {
		struct tm_vlan_hdr vh;

		if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD))
			break;
		if (tags >= TM_MAX_VLAN_DEPTH)
			break;
		if (tm_load(src, xdp, off, &vh, sizeof(vh)))
			return;
		proto = vh.encap_proto;
		off += sizeof(vh);
		tags++;
	}
	p->eth_proto = proto;
	if (proto == bpf_htons(ETH_P_IP))
		tm_parse_ipv4(src, xdp, p, off);
	else if (proto == bpf_htons(ETH_P_IPV6))
		tm_parse_ipv6(src, xdp, p, off);
}

#endif /* TM_PARSE_H */
