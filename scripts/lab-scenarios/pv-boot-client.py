#!/usr/bin/env python3
# Minimal client of the loader's upload protocols (docs/bootstrap.md §1, §2, §2.1) for the
# pv-boot lab scenario, run in dom0, written from the doc alone (a second implementation beside
# token-tool's): stage-2 binary, then kernel, initramfs, command line; prints one JSON line
# with each step's time in ms. With KERNEL.zz (a zlib stream of the kernel, made beforehand as
# token-tool does in the background) and a version-2 greeting, the kernel goes as a KERZ item.
# Exit 1 on any refusal (the line says why).
# Usage: pv-boot-client.py IP PORT STAGE2 KERNEL INITRD CMDLINE [KERNEL.zz]
import json, socket, struct, sys, time

ip, port, stage2, kernel, initrd, cmdline = sys.argv[1], int(sys.argv[2]), *sys.argv[3:7]
kernel_z = sys.argv[7] if len(sys.argv) > 7 else None
t0 = time.time()
steps = {}
def mark(k):
    steps[k] = round((time.time() - t0) * 1000)
s = socket.create_connection((ip, port), timeout=60)
f = s.makefile('rb')
def line():
    l = f.readline().decode(errors='replace').rstrip('\n')
    if not l or l.startswith('error') or 'refused' in l:
        print(json.dumps({"error": l, "steps": steps}))
        sys.exit(1)
    return l
b = open(stage2, 'rb').read()
s.sendall(b'LMSTAGE2' + struct.pack('>II', 1, len(b)) + b)
line(); mark('stage2_ok')
greeting = line(); mark('stage2_ready')
version = 1
for w in greeting.split():
    if w.startswith('version='):
        version = int(w[len('version='):])
k = open(kernel, 'rb').read()
items = [(b'KERN', k), (b'INRD', open(initrd, 'rb').read()), (b'CMDL', cmdline.encode())]
if kernel_z and version >= 2:
    # KERZ: N = 4 + stream length, then M = the inflated length, then the stream.
    z = open(kernel_z, 'rb').read()
    items[0] = (b'KERZ', struct.pack('>I', len(k)) + z)
steps['items'] = [t.decode() for t, _ in items]
steps['wire_bytes'] = sum(len(d) for _, d in items)
for tag, data in items:
    s.sendall(tag + struct.pack('>I', len(data)) + data)
    ack = line(); mark(tag.decode().lower() + '_ok')
    want = 'ok %s %d' % (tag.decode(), len(data)) + (' %d' % len(k) if tag == b'KERZ' else '')
    if ack != want:
        print(json.dumps({"error": "unexpected answer %r (want %r)" % (ack, want), "steps": steps}))
        sys.exit(1)
line(); mark('booting')
s.settimeout(120)
# What follows 'booting', line by line through the same buffered reader (it may already hold
# the next line): nothing until stage 1 closes the connection when the kernel is started, or
# an error line, after which the loader powers off without closing.
rest = b''
try:
    while True:
        l = f.readline()
        if not l:
            break
        rest += l
        if l.startswith(b'error'):
            break
except OSError:
    pass
mark('closed')
if b'error' in rest:
    print(json.dumps({"error": rest.decode(errors='replace').strip(), "steps": steps}))
    sys.exit(1)
print(json.dumps(steps))
