// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Test fixtures, never part of the agent (scripts/build-bpf --fixtures):
 *  - fx_vlan_push: tc egress program that moves a VLAN tag into skb metadata
 *    for UDP to port 7777, the way a VLAN device or a bridge hands frames to
 *    a NIC with tx-vlan-offload (this kernel has neither, so tests use this).
 *  - fx_xdp_pass: an XDP program "someone else" attached, which the agent
 *    must refuse to replace.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/udp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

SEC("tc")
int fx_vlan_push(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct udphdr *udp = (void *)(ip + 1);

	if ((void *)(udp + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl != 5 ||
	    ip->protocol != IPPROTO_UDP || udp->dest != bpf_htons(7777) || skb->vlan_present)
		return TC_ACT_UNSPEC;
	bpf_skb_vlan_push(skb, bpf_htons(ETH_P_8021Q), 42);
	return TC_ACT_UNSPEC;
}

SEC("xdp")
int fx_xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
