#!/usr/bin/perl
# lab-hub: an Ethernet hub for 3+ lab hosts. Each QEMU sends its frames as UDP datagrams to
# 127.0.0.1:HUBPORT (-netdev socket,udp=...,localaddr=127.0.0.1:HOSTPORT); the hub repeats
# every frame to all other hosts. Two hosts are wired directly and need no hub.
# usage: lab-hub HUBPORT HOSTPORT...
use strict;
use warnings;
use Socket qw(AF_INET SOCK_DGRAM inet_aton sockaddr_in pack_sockaddr_in);
my ($hub, @ports) = @ARGV;
die "usage: lab-hub HUBPORT HOSTPORT...\n" unless $hub && @ports;
socket(my $s, AF_INET, SOCK_DGRAM, 0) or die "socket: $!";
bind($s, pack_sockaddr_in($hub, inet_aton('127.0.0.1'))) or die "bind 127.0.0.1:$hub: $!";
my %peer = map { $_ => pack_sockaddr_in($_, inet_aton('127.0.0.1')) } @ports;
while (1) {
    my $from = recv($s, my $frame, 65536, 0);
    next unless defined $from;
    my ($fport) = sockaddr_in($from);
    next unless $peer{$fport};
    for my $p (@ports) {
        send($s, $frame, 0, $peer{$p}) if $p != $fport;
    }
}
