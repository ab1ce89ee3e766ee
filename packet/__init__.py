"""packet: the frame codec, a leaf package anyone may import (it imports nothing else of ours).

packet.py    the Packet record and protocol constants
codec.py     parse / build of Ethernet, 802.1Q, ARP, IPv4, ICMP, IPv6 (+ extension headers), ICMPv6
             (+ neighbor discovery), TCP, UDP; ParseError
rewrite.py   incremental rewrite of a raw frame (RFC 1624 checksum updates)
checksum.py  Internet checksums
flowkey.py   flow keys and the direction-normalised flow hash
spec.py      the packet spec of the CLI and the API (CONTRACTS §2)
addr.py      IPv4 / IPv6 / MAC text ↔ int, IPv6 multicast helpers
"""
