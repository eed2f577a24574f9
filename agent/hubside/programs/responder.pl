# The in-session responder in Perl (assumptions 3, 10; requests and answers: README). Sent after
# check.pl (ck comes from there) on the session's stdin; session.sh's bootstrap reads LENGTH bytes
# (this program's length, a word of the session command) and evals them, with @ARGV
# (STATEDIR, NAME, LENGTH). It runs for the session's life: one answer per request line, until EOF.
# Sent as one line of words: every run of white space becomes one space, strings included.
$| = 1; my ($D, $N) = @ARGV; my $buf = ""; my $skip = 0;
# count: the sessions recorded in $D (rport-PORT-PID files) whose pid is alive with the recorded start time;
# a v1 record carries start=TIME (docs/hub-records.md), the older form is "BOX TIME"
sub cn { my %n; opendir(my $h, $D) or return 0;
  while (defined(my $f = readdir($h))) { next unless $f =~ /^rport-\d+-(\d+)$/; my $q = $1;
    open(my $x, "<", "/proc/$q/stat") or next; my $l = ""; read($x, $l, 1024); close($x);
    $l =~ s/.*\) //s; my @w = split(" ", $l);
    open(my $y, "<", "$D/$f") or next; my $v = ""; read($y, $v, 512); close($y);
    my @r = split(" ", (split(/\n/, $v))[0] || ""); my $st = "";
    if (@r && $r[0] eq "v1") { for (@r) { $st = $1 if /^start=(\d+)$/ } } else { $st = $r[1] || "" }
    $n{$q} = 1 if @w > 19 && $w[0] ne "Z" && length($st) && $w[19] eq $st }
  closedir($h); return scalar(keys %n) }
sub ip { my $a = shift; return $a =~ /^\d{1,3}(\.\d{1,3}){3}$/ || ($a =~ /:/ && $a =~ /^[0-9a-fA-F:.]{2,45}$/) }
# a timeout or grace: seconds in (0, 300]
sub sec { my $v = shift; return $v =~ /^\d{1,3}(\.\d{1,6})?$/ && $v > 0 && $v <= 300 }
# one request line -> one answer line (none for a line without an ID)
sub hd { my @w = split(" ", $_[0]); return if !@w || $w[0] !~ /^\d{1,12}$/; my $i = shift @w; my $o = "bad";
  if ("@w" eq "ping") { $o = "pong" } elsif ("@w" eq "count") { $o = "count " . cn() }
  elsif (@w == 6 && $w[0] eq "check") { my (undef, $as, $p, $h, $t, $g) = @w; my @A = split(/,/, $as, -1);
    my $ok = @A >= 1 && @A <= 2 && $p =~ /^\d{1,5}$/ && $p >= 1 && $p <= 65535 && sec($t) && sec($g)
      && ($h eq "-" || $h =~ /^([0-9a-fA-F]{2}){1,256}$/); for (@A) { $ok = 0 unless ip($_) }
    if ($ok) { my $b = $h eq "-" ? "" : pack("H*", $h); my ($f, $fa);
      for my $a (@A) { my $r = eval { ck($a, $p, $b, $t, $g) }; $r = 86 unless defined $r;
        if (!defined($f) || $r == 80) { $f = $r; $fa = $a } last if $r == 80 }
      $o = "check $f $N $fa" } }
  syswrite(STDOUT, "sshkeep-answer $i $o\n") or exit 0 }
# lines from stdin, a bounded buffer: a line longer than 600 bytes is skipped whole
while (1) { my $c = ""; my $k = sysread(STDIN, $c, 4096); if (!defined $k) { next if $!{EINTR}; last } last if !$k;
  $buf .= $c; while ((my $j = index($buf, "\n")) >= 0) { my $l = substr($buf, 0, $j); substr($buf, 0, $j + 1) = "";
    if ($skip) { $skip = 0 } else { hd($l) } }
  if (length($buf) > 600) { $buf = ""; $skip = 1 } }
exit 0;
