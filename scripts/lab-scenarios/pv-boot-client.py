#!/usr/bin/env python3
# Minimal client of the loader's upload protocols (docs/bootstrap.md §1, §2) for the pv-boot
# lab scenario, run in dom0: stage-2 binary, then kernel, initramfs, command line; prints one
# JSON line with each step's time in ms. Exit 1 on any refusal (the line says why).
import json, socket, struct, sys, time

ip, port, stage2, kernel, initrd, cmdline = sys.argv[1], int(sys.argv[2]), *sys.argv[3:7]
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
line(); mark('stage2_ready')
for tag, data in ((b'KERN', open(kernel, 'rb').read()), (b'INRD', open(initrd, 'rb').read()),
                  (b'CMDL', cmdline.encode())):
    s.sendall(tag + struct.pack('>I', len(data)) + data)
    line(); mark(tag.decode().lower() + '_ok')
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
