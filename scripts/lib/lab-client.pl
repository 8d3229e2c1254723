#!/usr/bin/perl
# Host side of the lab control channel (see scripts/lab-dom0/lab-agent and docs/lab.md).
# usage: lab-client.pl SOCKET TIMEOUT_S STDIN_FILE CMD
#   STDIN_FILE '' sends no stdin. Writes the command's stdout and stderr to ours and exits
#   with its status; 255 with a message when the channel itself fails. Callers hold a lock
#   (one request per host at a time). Only perl-base modules are used.
use strict;
use warnings;
use IO::Socket::UNIX;
use Fcntl qw(SEEK_SET);

my ($sock, $timeout, $infile, $cmd) = @ARGV;
die "usage: lab-client.pl SOCKET TIMEOUT_S STDIN_FILE CMD\n" unless defined $cmd;
$timeout = 600 unless $timeout =~ /^\d+$/ && $timeout > 0;

sub fail { print STDERR "lab: $_[0]\n"; exit 255; }

# The agent enforces the command's timeout; the margin covers transfer of large payloads.
$SIG{ALRM} = sub { fail("no answer from the dom0 agent within " . ($timeout + 120) . " s ($sock)") };
alarm($timeout + 120);

my $c;
for my $try (1 .. 50) {
    $c = IO::Socket::UNIX->new(Type => SOCK_STREAM(), Peer => $sock);
    last if $c;
    select(undef, undef, undef, 0.1);
}
fail("cannot connect to $sock: $!") unless $c;
binmode $c;

my $id = join '', map { sprintf '%04x', int(rand(65536)) } 1 .. 4;
my $inlen = 0;
my $in;
if ($infile ne '') {
    open($in, '<', $infile) or fail("cannot read $infile: $!");
    binmode $in;
    $inlen = -s $in;
}
sub put {
    my ($data) = @_;
    my $off = 0;
    while ($off < length $data) {
        my $w = syswrite($c, $data, length($data) - $off, $off);
        fail("write to $sock: $!") unless defined $w;
        $off += $w;
    }
}
put("LABQ1 $id $timeout " . length($cmd) . " $inlen\n" . $cmd);
if ($in) {
    my $left = $inlen;
    while ($left > 0) {
        my $n = sysread($in, my $chunk, $left < 262144 ? $left : 262144);
        fail("read $infile: $!") unless $n;
        put($chunk);
        $left -= $n;
    }
}

my $buf = '';
# Once the response header is in, the body streams without pause; a stall means a broken
# agent or channel (LAB_STALL_TIMEOUT seconds, default 120).
my $stall = ($ENV{LAB_STALL_TIMEOUT} // '') =~ /^\d+$/ ? $ENV{LAB_STALL_TIMEOUT} : 120;
my $in_body = 0;
sub more {
    if ($in_body) {
        $SIG{ALRM} = sub { fail("response body stalled for $stall s ($sock)") };
        alarm($stall);
    }
    my $n = sysread($c, $buf, 262144, length $buf);
    fail("dom0 agent closed the channel (host down?)") unless $n;
}
# Skip anything left over from an earlier, aborted request until our response header.
my $hdr;
while (1) {
    my $at = index($buf, "LABR1 $id ");
    if ($at >= 0) {
        my $nl = index($buf, "\n", $at);
        if ($nl >= 0) {
            $hdr = substr($buf, $at, $nl - $at);
            $buf = substr($buf, $nl + 1);
            last;
        }
    } elsif (length $buf > 64) {
        $buf = substr($buf, -64);
    }
    more();
}
my (undef, undef, $status, $outlen, $errlen) = split / /, $hdr;
fail("malformed response header: $hdr") unless defined $errlen && $errlen =~ /^\d+$/;
$in_body = 1;
for my $spec ([\*STDOUT, $outlen], [\*STDERR, $errlen]) {
    my ($fh, $left) = @$spec;
    binmode $fh;
    while ($left > 0) {
        more() if length $buf == 0;
        my $take = length $buf < $left ? length $buf : $left;
        my $data = substr($buf, 0, $take, '');
        my $off = 0;
        while ($off < length $data) {
            my $w = syswrite($fh, $data, length($data) - $off, $off);
            fail("write output: $!") unless defined $w;
            $off += $w;
        }
        $left -= $take;
    }
}
exit $status;
