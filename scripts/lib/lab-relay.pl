#!/usr/bin/perl
# lab-relay: a one-connection TCP relay for fault tests (perl-base only, runs in a dom0).
# Accepts one connection on LISTEN_PORT, connects to DST_IP:DST_PORT and copies both ways;
# the byte at offset FLIP of the client->server direction is XORed with 0x01 (FLIP < 0: none).
#   perl lab-relay.pl LISTEN_PORT DST_IP DST_PORT FLIP
use strict;
use warnings;
use IO::Socket::INET;
use IO::Select;

my ($lport, $dip, $dport, $flip) = @ARGV;
die "usage: lab-relay.pl LISTEN_PORT DST_IP DST_PORT FLIP\n" unless defined $flip;
my $l = IO::Socket::INET->new(LocalPort => $lport, Listen => 1, ReuseAddr => 1, Proto => 'tcp')
    or die "listen $lport: $!\n";
my $c = $l->accept or die "accept: $!\n";
my $s = IO::Socket::INET->new(PeerAddr => $dip, PeerPort => $dport, Proto => 'tcp')
    or die "connect $dip:$dport: $!\n";
my $sel = IO::Select->new($c, $s);
my ($up, $flipped) = (0, 0);
OUTER: while (1) {
    for my $fh ($sel->can_read(600)) {
        my $n = sysread($fh, my $buf, 65536);
        last OUTER unless $n;
        if ($fh == $c) {
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
