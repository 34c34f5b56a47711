#!/usr/bin/perl
# bench-fuse-statx.pl PATH N: N x statx(PATH, AT_STATX_FORCE_SYNC), which always asks the
# filesystem (one FUSE GETATTR each); prints the p50 and p99 latency in microseconds.
# Used by bench-fuse.sh (perl: no compiler needed; x86_64 syscall number).
use strict;
use warnings;
use Time::HiRes qw(clock_gettime CLOCK_MONOTONIC);

my ($path, $n) = @ARGV;
die "usage: $0 PATH N\n" unless defined $n && $n > 0;
my ($SYS_statx, $AT_FDCWD, $AT_STATX_FORCE_SYNC, $STATX_BASIC_STATS) = (332, -100, 0x2000, 0x7ff);
my $buf = "\0" x 256;
my @t;
for (1 .. $n) {
    my $t0 = clock_gettime(CLOCK_MONOTONIC);
    syscall($SYS_statx, $AT_FDCWD, $path, $AT_STATX_FORCE_SYNC, $STATX_BASIC_STATS, $buf) == 0
      or die "statx $path: $!\n";
    push @t, clock_gettime(CLOCK_MONOTONIC) - $t0;
}
@t = sort { $a <=> $b } @t;
printf "%.2f %.2f\n", $t[int($n / 2)] * 1e6, $t[int($n * 0.99)] * 1e6;
