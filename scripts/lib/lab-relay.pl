#!/usr/bin/perl
# lab-relay: a one-connection TCP relay for fault tests (perl-base only, runs in a dom0).
# Accepts one connection on LISTEN_PORT, connects to DST_IP:DST_PORT and copies both ways.
# FAULT says what goes wrong in the client->server direction:
#   a number N >= 0  the byte at offset N is XORed with 0x01
#   capture          the checkpoint stream (docs/stream.md) is passed up to the start of its
#                    CAPTURE record, then the relay goes silent both ways (reads and writes
#                    nothing more) until it is killed: a link lost right at the capture
#   a negative number  no fault
#   perl lab-relay.pl LISTEN_PORT DST_IP DST_PORT FAULT
use strict;
use warnings;
use IO::Socket::INET;
use IO::Select;

my ($lport, $dip, $dport, $fault) = @ARGV;
die "usage: lab-relay.pl LISTEN_PORT DST_IP DST_PORT FAULT\n" unless defined $fault;
my $at_capture = $fault eq 'capture';
my $flip = $at_capture ? -1 : $fault;
die "FAULT must be a number or 'capture'\n" unless $flip =~ /^-?\d+$/;
$| = 1;
my $l = IO::Socket::INET->new(LocalPort => $lport, Listen => 1, ReuseAddr => 1, Proto => 'tcp')
    or die "listen $lport: $!\n";
my $c = $l->accept or die "accept: $!\n";
my $s = IO::Socket::INET->new(PeerAddr => $dip, PeerPort => $dport, Proto => 'tcp')
    or die "connect $dip:$dport: $!\n";
my $sel = IO::Select->new($c, $s);
my ($up, $flipped) = (0, 0);

# Record walk for `capture`: the stream offset of the next record's header (after the
# 16-byte preamble) and the first bytes of that header seen so far (type u32, length u32).
my ($next, $head) = (16, '');
# The offset in $buf (stream offset $up) where the CAPTURE record starts, or -1.
sub capture_in {
    my ($buf) = @_;
    my $end = $up + length $buf;
    while ($next + length($head) < $end) {
        my $from = $next + length $head;
        $head .= substr($buf, $from - $up, 8 - length $head);
        return -1 if length $head < 8;
        my ($type, $len) = unpack('VV', $head);
        if ($type == 4) {
            my $i = $next - $up;
            return $i < 0 ? 0 : $i;
        }
        $next += 16 + $len + (8 - $len % 8) % 8;
        $head = '';
    }
    return -1;
}

OUTER: while (1) {
    for my $fh ($sel->can_read(600)) {
        my $n = sysread($fh, my $buf, 65536);
        last OUTER unless $n;
        if ($fh == $c) {
            if ($at_capture) {
                my $i = capture_in($buf);
                if ($i >= 0) {
                    syswrite($s, substr($buf, 0, $i)) if $i > 0;
                    print "silent from stream offset ", $up + $i, " (the CAPTURE record)\n";
                    sleep 3600 while 1;
                }
            }
            if ($flip >= 0 && !$flipped && $flip < $up + $n) {
                my $i = $flip - $up;
                substr($buf, $i, 1) = chr(ord(substr($buf, $i, 1)) ^ 0x01);
                $flipped = 1;
                print "flipped byte $flip\n";
            }
            $up += $n;
            syswrite($s, $buf) // last OUTER;
        } else {
            syswrite($c, $buf) // last OUTER;
        }
    }
}
print "relayed $up bytes upstream\n";
