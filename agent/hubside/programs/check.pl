# The forward check in Perl (assumption 3): what check.py.in does, the same codes.
# ck(address, port, banner bytes, timeout, grace) -> 80-86 (README). Alone it is the one-shot exec
# check: check.sh runs `perl -e SOURCE ADDRESS PORT HEX T G` and it exits with ck's code. The Perl
# responder is this file with responder.pl after it; its @ARGV is (STATEDIR, NAME, LENGTH), so it
# only defines ck here. IO::Socket::IP (IPv6) is core since 5.20; without it ::1 gives 86.
# Sent as one line of words: every run of white space becomes one space, strings included.
use IO::Socket; use Time::HiRes qw(time);
sub ck {
  my ($a, $p, $b, $t, $g) = @_; my $end = time + $t;
  my $c = ($a =~ /:/) ? "IO::Socket::IP" : "IO::Socket::INET"; eval "require $c" or return 86;
  my $s = $c->new(PeerHost => $a, PeerPort => $p, Proto => "tcp", Timeout => $t);
  if (!$s) { return $!{ECONNREFUSED} ? 81 : $!{ECONNRESET} ? 82 : ($!{ETIMEDOUT} || $!{EINPROGRESS}) ? 83 : 86 }
  # without a banner, the grace is how long data may take; with one, the whole timeout
  my $lim = length($b) ? $end : (time + $g < $end ? time + $g : $end); my $d = ""; my $r = -1;
  while ($r < 0) {
    my $w = $lim - time; last if $w <= 0;
    my $rin = ""; vec($rin, fileno($s), 1) = 1; my $n = select(my $rout = $rin, undef, undef, $w);
    next if $n < 0; last if $n == 0;
    my $x = ""; my $k = sysread($s, $x, 4096);
    if (!$k) { $r = length($d) ? 84 : 82; last }
    $d .= $x; if (!length($b) || substr($d, 0, length $b) eq $b) { $r = 80; last }
    if (substr($b, 0, length $d) ne substr($d, 0, length $b)) { $r = 84; last }
  }
  close($s); return $r >= 0 ? $r : (length($d) ? 84 : length($b) ? 83 : 80)
}
exit ck($ARGV[0], $ARGV[1], pack("H*", $ARGV[2]), $ARGV[3], $ARGV[4]) if @ARGV == 5;
