#!/usr/bin/perl
# check-pattern.pl CHECKPOINT PFN...: the P/Q check (stage 41) on a checkpoint stream
# (docs/stream.md). PFN number i (in the order pattern-writer listed them) must hold, in the
# last copy of that pfn in the stream, pattern P of page i: 8-byte tag ('P' << 56 | i), then
# 4088 bytes 'P'. A Q page or a missing pfn is a failure. Framing is walked, CRCs are not
# checked here (`checkpointd inspect` validates the file). perl-base only: runs in dom0.
use strict;
use warnings;
my ($file, @pfns) = @ARGV;
die "usage: check-pattern.pl CHECKPOINT PFN...\n" unless defined $file && @pfns;
my %want;
$want{$pfns[$_]} = $_ for 0 .. $#pfns;
open(my $fh, '<:raw', $file) or die "open $file: $!\n";
local $/;
my $d = <$fh>;
close $fh;
substr($d, 0, 8) eq 'LNDRCKPT' or die "FAIL: not a checkpoint stream\n";
my ($off, %last) = (16);
while ($off + 16 <= length $d) {
    my ($type, $len) = unpack('VV', substr($d, $off, 8));
    my $body = $off + 16;
    last if $type == 0;
    if ($type == 3) {
        my $count = unpack('V', substr($d, $body, 4));
        my $data = $body + 8 + 8 * $count;
        for my $k (0 .. $count - 1) {
            my ($lo, $hi) = unpack('VV', substr($d, $body + 8 + 8 * $k, 8));
            my $kind = $hi >> 28;
            my $pfn = $lo + ($hi & 0xfffff) * 4294967296;
            if ($kind == 0) {
                $last{$pfn} = substr($d, $data, 4096) if exists $want{$pfn};
                $data += 4096;
            } else {
                $last{$pfn} = "\0" x 4096 if exists $want{$pfn};
            }
        }
    }
    $off = $body + $len;
    $off += (8 - $off % 8) % 8;
}
my ($ok, $bad) = (0, 0);
for my $i (0 .. $#pfns) {
    my $p = $last{$pfns[$i]};
    my $expect = pack('VV', $i, ord('P') << 24) . ('P' x 4088);
    if (!defined $p) {
        print "pfn $pfns[$i] (page $i): not in the checkpoint\n"; $bad++;
    } elsif ($p ne $expect) {
        my $c = substr($p, 8, 1);
        print "pfn $pfns[$i] (page $i): holds '$c' not P\n"; $bad++;
    } else {
        $ok++;
    }
}
print(($bad ? "PATTERN FAIL" : "PATTERN PASS") . " $ok/" . scalar(@pfns) . " pages hold P\n");
exit($bad ? 1 : 0);
