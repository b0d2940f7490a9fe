#!/usr/bin/env bash
# Run one swiftkvm command on a hardware-like KVM: inside a QEMU guest in pure software
# emulation (TCG) with an emulated AMD-V CPU, whose Debian stock kernel loads kvm_amd.
#
#   Firmware/linux/nested-kvm.sh [--swiftkvm BIN | --qemu] [--stdin FILE] [--timeout SECONDS] [--log FILE]
#                                [--smp N] [--memory MB] -- SWIFTKVM-ARGUMENTS...
#   Firmware/linux/nested-kvm.sh --prepare     (install QEMU, build the cached parts, run nothing)
#
# SWIFTKVM-ARGUMENTS are what `swiftkvm` gets (e.g. `run --kernel K --initrd I --cmdline "..."`);
# the files given to --kernel, --initrd, --firmware and --disk are host paths: they are copied into the
# outer VM and the arguments rewritten to point at the copies. swiftkvm's standard input is FILE
# (default: empty), its standard output and error are the outer VM's serial console, which this
# script copies to its standard output and to the --log file.
#
# Why: this host's /dev/kvm is KVM-PVM, which emulates guest ring 0 ~2,000x slower and cannot run
# Debian's stock kernel (shared/HOST.md). kvm_amd inside QEMU/TCG runs guest ring 0 at native-ish
# speed with the semantics of hardware KVM, so swiftkvm can be tested on the stock kernel here.
#
# Exit status: swiftkvm's own; 125 when the lane failed (the outer VM did not boot, kvm_amd gave
# no /dev/kvm, the outer VM ended without reporting, or --timeout passed), with one line on
# standard error saying which; 2 for bad arguments. The last line on standard error always says
# what happened and how long the parts took.
#
# --qemu runs the host's QEMU (qemu-system-x86_64, with its x86 firmware files) inside instead of
# swiftkvm, the arguments after -- being QEMU's (-kernel and -initrd files are copied like
# swiftkvm's): the peer on the same nested KVM, for benchmarks and for telling a lane fault from
# a swiftkvm one.
#
# The outer initramfs is two concatenated cpio archives: a base (busybox-static, the kvm modules
# of Debian's stock kernel package, init/nested-init), built once into
# ${SWIFTKVM_CACHE:-/var/cache/swiftkvm}/nested-kvm/ and rebuilt when the sha256 of its inputs
# changes (like build.sh); and a payload made on every run (swiftkvm, the shared libraries ldd
# lists, the inner guest's files, standard input, the arguments), which takes about a second.
#
# Environment: SWIFTKVM_CACHE, QEMU (default qemu-system-x86_64), FORCE=1 (rebuild the base).
set -euo pipefail

# A parent may hand its blocked signals down (Foundation's Process, from a test's thread, blocks
# nearly all): then SIGTERM would neither stop this script nor QEMU. Start again with none blocked.
if [ -z "${NESTED_KVM_UNBLOCKED:-}" ] && ! grep -q '^SigBlk:[[:space:]]*0*$' /proc/$$/status; then
	export NESTED_KVM_UNBLOCKED=1
	exec "${PYTHON:-python3}" -c 'import os, signal, sys
signal.pthread_sigmask(signal.SIG_SETMASK, [])
os.execv("/bin/bash", ["bash"] + sys.argv[1:])' "${BASH_SOURCE[0]}" "$@"
fi

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE=${SWIFTKVM_CACHE:-/var/cache/swiftkvm}
PYTHON=${PYTHON:-python3}
QEMU=${QEMU:-qemu-system-x86_64}
# Bump when the recipe of the base archive changes.
RECIPE=1

# kvm_amd and what it needs (dependencies are added from modules.dep).
OUTER_MODULES="irqbypass ccp kvm kvm_amd"
OUTER_APPLETS="sh cat echo ls mount mkdir insmod grep sed tail tr cut dmesg stty poweroff sleep"
# Exit status when the lane itself fails (not a status swiftkvm gives for a Linux guest).
LANE_FAILED=125

log() { printf 'nested-kvm: %s\n' "$*" >&2; }
die() { printf 'nested-kvm: error: %s\n' "$*" >&2; exit "$LANE_FAILED"; }
usage() { printf 'nested-kvm: %s\n' "$*" >&2; sed -n '5,7p' "${BASH_SOURCE[0]}" | sed 's/^# *//' >&2; exit 2; }

SWIFTKVM=$ROOT/.build/debug/swiftkvm
# What runs inside: swiftkvm, or (--qemu) QEMU.
VMM=swiftkvm
STDIN=/dev/null
TIMEOUT=300
LOG=
SMP=2
MEMORY=2048
PREPARE=
while [ $# -gt 0 ]; do
	case "$1" in
	--swiftkvm) SWIFTKVM=${2:?}; shift 2 ;;
	--qemu) VMM=qemu; shift ;;
	--stdin) STDIN=${2:?}; shift 2 ;;
	--timeout) TIMEOUT=${2:?}; shift 2 ;;
	--log) LOG=${2:?}; shift 2 ;;
	--smp) SMP=${2:?}; shift 2 ;;
	--memory) MEMORY=${2:?}; shift 2 ;;
	--prepare) PREPARE=1; shift ;;
	--) shift; break ;;
	*) usage "unknown option $1 (swiftkvm's arguments go after --)" ;;
	esac
done
[ $# -gt 0 ] || [ -n "$PREPARE" ] || usage "no swiftkvm arguments"
if [ "$VMM" = qemu ]; then
	SWIFTKVM=$(command -v "$QEMU") || usage "--qemu: $QEMU is not installed (apt-get install qemu-system-x86)"
fi
[ -n "$PREPARE" ] || [ -x "$SWIFTKVM" ] || usage "$SWIFTKVM is not an executable (swift build, or --swiftkvm)"
[ -r "$STDIN" ] || usage "--stdin $STDIN is not readable"
[[ $TIMEOUT =~ ^[0-9]+$ ]] && [ "$TIMEOUT" -gt 0 ] || usage "--timeout must be a whole number of seconds"

T0=$EPOCHREALTIME
since() { # seconds since T0 (or since $2), one decimal
	awk -v a="${2:-$T0}" -v b="${1:-$EPOCHREALTIME}" 'BEGIN { printf "%.1f", b - a }'
}

# --- what the lane needs on the host ------------------------------------------------

ensure_qemu() {
	command -v "$QEMU" >/dev/null && return
	log "installing qemu-system-x86"
	{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends qemu-system-x86; } >&2 ||
		die "cannot install qemu-system-x86"
}

# The stock kernel (the outer VM's kernel) and its package's deb are made by build.sh.
STOCK=$CACHE/stock-kernel
ensure_stock() {
	[ -s "$STOCK/bzImage" ] && [ -s "$STOCK/version" ] && stock_deb >/dev/null 2>&1 && return
	"$HERE/build.sh" stock
}
stock_deb() {
	local kver f
	kver=$(cat "$STOCK/version")
	f=$(ls "$CACHE/debs/linux-image-$kver"/*/*.deb 2>/dev/null | sort -V | tail -n1)
	[ -n "$f" ] || return 1
	echo "$f"
}
busybox_deb() {
	local f
	f=$(ls "$CACHE"/debs/busybox-static/*/*.deb 2>/dev/null | sort -V | tail -n1)
	[ -n "$f" ] || die "no busybox-static deb in $CACHE/debs (make -C Firmware/linux stock)"
	echo "$f"
}

# --- the base archive: busybox, kvm modules, /init ------------------------------------

BASE_DIR=$CACHE/nested-kvm
BASE=$BASE_DIR/outer-base.cpio

build_base() {
	local image bb key
	image=$(stock_deb) || die "no deb for the stock kernel in $CACHE/debs"
	bb=$(busybox_deb)
	key=$({
		echo "recipe=$RECIPE"
		echo "image=${image#"$CACHE"/} busybox=${bb#"$CACHE"/}"
		echo "modules=$OUTER_MODULES applets=$OUTER_APPLETS"
		cat "$HERE/init/nested-init" "$HERE/mkcpio.py" "$HERE/pack-modules.py"
		sed -n '/^# --- the base archive/,/^# --- end of the base archive/p' "${BASH_SOURCE[0]}"
	} | sha256sum | cut -d' ' -f1)
	if [ -z "${FORCE:-}" ] && [ -s "$BASE" ] && [ "$(cat "$BASE.key" 2>/dev/null)" = "$key" ]; then
		return
	fi
	local t0=$EPOCHREALTIME tmp
	tmp=$(mktemp -d "$BASE_DIR/build.XXXXXX")
	log "building the outer initramfs base (key ${key:0:12}) from ${image##*/}"
	dpkg-deb -x "$bb" "$tmp/bb"
	[ -x "$tmp/bb/bin/busybox" ] || die "no bin/busybox in $bb"
	dpkg-deb -x "$image" "$tmp/pkg"
	local kver mods
	kver=$(ls "$tmp/pkg/lib/modules" | head -n1)
	mods=$tmp/pkg/lib/modules/$kver
	# modules.dep is made by depmod at install time; make it for the extracted tree.
	depmod -b "$tmp/pkg" "$kver"
	{
		echo "dir /bin 755"
		echo "dir /dev 755"
		echo "nod /dev/console 600 c 5 1"
		echo "nod /dev/null 666 c 1 3"
		echo "dir /proc 755"
		echo "dir /sys 755"
		echo "dir /tmp 1777"
		echo "dir /root 700"
		echo "file /bin/busybox $tmp/bb/bin/busybox 755"
		echo "file /init $HERE/init/nested-init 755"
		local a
		for a in $OUTER_APPLETS; do echo "slink /bin/$a busybox 777"; done
		echo "dir /lib 755"
		echo "dir /lib/modules 755"
	} >"$tmp/list"
	# The modules, dependencies first, and their load-order file.
	"$PYTHON" "$HERE/pack-modules.py" "$mods" "$tmp" $OUTER_MODULES >>"$tmp/list" ||
		die "cannot pack the modules $OUTER_MODULES"
	"$PYTHON" "$HERE/mkcpio.py" "$tmp/list" "$BASE.tmp"
	mv "$BASE.tmp" "$BASE"
	echo "$key" >"$BASE.key"
	log "outer initramfs base: $BASE ($(stat -c %s "$BASE") bytes, modules: $(paste -sd' ' "$tmp/load-order")) in $(since "" "$t0") s"
	rm -rf "$tmp"
}
# --- end of the base archive ---------------------------------------------------------

# --- the payload: swiftkvm, its libraries, the inner guest's files, stdin, arguments ----

# quote WORD: WORD in single quotes for sh.
quote() { printf "'%s'" "${1//\'/\'\\\'\'}"; }

# Every directory on the way to PATH, outermost first, as cpio list lines (once each).
declare -A LISTED_DIRS=()
list_dirs() {
	local dir=${1%/*} parts=() d=
	while [ -n "$dir" ]; do parts=("$dir" "${parts[@]}"); dir=${dir%/*}; done
	for d in "${parts[@]}"; do
		[ -n "${LISTED_DIRS[$d]:-}" ] && continue
		LISTED_DIRS[$d]=1
		echo "dir $d 755"
	done
}

build_payload() { # build_payload DIR ARGS... : writes DIR/payload.cpio
	local tmp=$1
	shift
	local list=$tmp/payload.list
	# /bin, /lib and /lib/modules are in the base archive already.
	LISTED_DIRS=([/bin]=1 [/lib]=1 [/lib/modules]=1)
	{
		list_dirs /nested/x
		echo "file /nested/stdin $STDIN 644"
	} >"$list"
	if [ "$VMM" = swiftkvm ]; then
		echo "file /nested/vmm $SWIFTKVM 755" >>"$list"
	else
		# QEMU finds its firmware relative to its own path: it keeps its host path, and with it
		# its x86 firmware (microvm's qboot, SeaBIOS for pc/q35, the option ROMs of -kernel),
		# symbolic links resolved.
		local f
		list_dirs "$SWIFTKVM" >>"$list"
		echo "file $SWIFTKVM $(readlink -f "$SWIFTKVM") 755" >>"$list"
		echo "slink /nested/vmm $SWIFTKVM 777" >>"$list"
		for f in /usr/share/qemu/{bios-microvm.bin,qboot.rom,linuxboot.bin,linuxboot_dma.bin,kvmvapic.bin,pvh.bin} \
			/usr/share/seabios/{bios.bin,bios-256k.bin}; do
			[ -e "$f" ] || continue
			list_dirs "$f" >>"$list"
			echo "file $f $(readlink -f "$f") 644" >>"$list"
		done
	fi

	# The shared libraries, at the paths ldd found them (the dynamic loader at its PT_INTERP path).
	local line lib real libdirs=()
	ldd "$SWIFTKVM" >"$tmp/ldd" || die "ldd $SWIFTKVM failed"
	while read -r line; do
		case "$line" in
		*"=> not found"*) die "ldd: $line" ;;
		*"=> /"*) lib=${line#*=> }; lib=${lib%% (*} ;;
		/*) lib=${line%% (*} ;;
		*) continue ;;
		esac
		real=$(readlink -f "$lib")
		list_dirs "$lib" >>"$list"
		echo "file $lib $real 755" >>"$list"
		libdirs+=("${lib%/*}")
	done <"$tmp/ldd"

	# swiftkvm's arguments, with host files copied in.
	local args=() n=0 a opt file suffix
	while [ $# -gt 0 ]; do
		a=$1
		shift
		opt= file= suffix=
		case "$a" in
		--kernel | --initrd | --firmware | --disk | -kernel | -initrd)
			[ $# -gt 0 ] || usage "$a needs a value"
			opt=$a file=$1
			shift
			;;
		--kernel=* | --initrd=* | --firmware=* | --disk=*) opt=${a%%=*}; file=${a#*=} ;;
		esac
		# A disk may carry options after its path (PATH,readonly); they stay on the copy.
		if [ "$opt" = --disk ] && [[ $file == *,* ]]; then suffix=,${file#*,}; file=${file%%,*}; fi
		if [ -n "$opt" ]; then
			[ -f "$file" ] && [ -r "$file" ] || usage "$opt $file: not a readable file"
			[[ $file != *[[:space:]]* ]] || usage "$opt '$file': a path with white space cannot be packed"
			n=$((n + 1))
			local inside=/nested/files/$n-${file##*/}
			[ $n -gt 1 ] || list_dirs "$inside" >>"$list"
			# Disks are written by the guest: they live in the outer VM's RAM, not on the host.
			echo "file $inside $(readlink -f "$file") 644" >>"$list"
			args+=("$opt" "$inside$suffix")
		else
			args+=("$a")
		fi
	done
	{
		echo "# swiftkvm's environment and arguments (written by nested-kvm.sh)"
		echo "NESTED_VMM=$VMM"
		echo "export LD_LIBRARY_PATH=$(printf '%s\n' "${libdirs[@]}" | sort -u | paste -sd:)"
		# When init reports on a swiftkvm that is still running: before the deadline, leaving
		# time for the outer boot (~5 s) and the report to come out.
		echo "NESTED_REPORT_AFTER=$((TIMEOUT > 60 ? TIMEOUT - 25 : TIMEOUT * 2 / 3))"
		printf 'set --'
		for a in "${args[@]}"; do printf ' %s' "$(quote "$a")"; done
		echo
	} >"$tmp/args"
	echo "file /nested/args $tmp/args 644" >>"$list"
	"$PYTHON" "$HERE/mkcpio.py" "$list" "$tmp/payload.cpio"
}

# monitor SOCKET COMMAND...: QEMU's human monitor's answers to COMMANDs.
monitor() {
	"$PYTHON" - "$@" <<-'EOF'
	import socket, sys, time
	s = socket.socket(socket.AF_UNIX)
	s.settimeout(5)
	s.connect(sys.argv[1])
	out = b""
	try:
	    for command in sys.argv[2:]:
	        s.sendall(command.encode() + b"\n")
	        time.sleep(1)
	    s.shutdown(socket.SHUT_WR)
	    while chunk := s.recv(65536):
	        out += chunk
	except OSError:  # "quit" closes the connection
	    pass
	sys.stdout.write(out.decode(errors="replace").replace("\r", ""))
	EOF
}

# --- run ------------------------------------------------------------------------------

ensure_qemu
ensure_stock
mkdir -p "$BASE_DIR"
(
	# One base build at a time per cache (not build.sh's lock: a kernel build holds that for minutes).
	flock 9
	build_base
) 9>"$BASE_DIR/.lock"
[ -z "$PREPARE" ] || { log "ready: $QEMU, $STOCK/bzImage, $BASE"; exit 0; }

TMP=$(mktemp -d "${TMPDIR:-/tmp}/nested-kvm.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
build_payload "$TMP" "$@"
cat "$BASE" "$TMP/payload.cpio" >"$TMP/outer.cpio"
log "lane: nested kvm_amd inside QEMU TCG (outer initramfs $(($(stat -c %s "$TMP/outer.cpio") >> 20)) MiB, packed in $(since) s)"

[ -n "$LOG" ] || LOG=$TMP/serial.log
: >"$LOG"
# EPYC without what TCG cannot emulate (QEMU would drop each with a warning). NRIP save is among
# them: kvm_amd then decodes the instruction at each exit itself.
CPU=EPYC,+svm,+npt,-nrip-save,-rdseed,-sha-ni,-fxsr-opt,-misalignsse,-3dnowprefetch,-osvw,-topoext,-xsavec
QEMU_ARGS=(-accel tcg -M q35 -cpu "$CPU" -smp "$SMP" -m "$MEMORY"
	-nodefaults -no-user-config -display none -serial stdio -no-reboot
	-monitor "unix:$TMP/monitor,server=on,wait=off"
	-kernel "$STOCK/bzImage" -initrd "$TMP/outer.cpio"
	-append "console=ttyS0 quiet panic=-1")

# The serial console goes to standard output and the log as it comes. SIGTERM, SIGINT or SIGHUP
# to this script stops QEMU.
exec {SERIAL}> >(tee -a "$LOG")
TEE_PID=$!
set +e
"$QEMU" "${QEMU_ARGS[@]}" </dev/null >&"$SERIAL" 2>&1 &
QEMU_PID=$!
SIGNALLED=
trap 'SIGNALLED=1; kill -TERM "$QEMU_PID" 2>/dev/null' TERM INT HUP
# The deadline: the outer VM's CPU state goes to the log (where were its vCPUs?), then QEMU stops.
# It polls, so it ends within a second of QEMU, holding none of the output's descriptors meanwhile.
(
	exec </dev/null >/dev/null 2>&1 {SERIAL}>&-
	for ((left = TIMEOUT; left > 0; left--)); do
		sleep 1
		kill -0 "$QEMU_PID" 2>/dev/null || exit 0
	done
	echo "NESTED-KVM-DEADLINE: the outer VM's vCPUs (QEMU monitor):" >>"$LOG"
	monitor "$TMP/monitor" "info cpus" "info registers -a" "quit" | grep -av -e "^(qemu)" -e "^QEMU .* monitor" >>"$LOG" 2>&1
	sleep 5
	kill -KILL "$QEMU_PID" 2>/dev/null
) &
DEADLINE_PID=$!
while :; do
	wait "$QEMU_PID"
	QEMU_STATUS=$?
	kill -0 "$QEMU_PID" 2>/dev/null || break  # else a trapped signal interrupted wait
done
wait "$DEADLINE_PID"
set -e
exec {SERIAL}>&-
wait "$TEE_PID" 2>/dev/null || true

# The outer init stamps its clock (seconds since the outer kernel started) at both ends.
field() { tr -d "\r" <"$LOG" | { grep -a "^$1" || true; } | tail -n1 | sed "s/^$1//"; }
exit_status=$(field NESTED-KVM-EXIT=)
error=$(field NESTED-KVM-ERROR=)
started=$(field 'NESTED-KVM-START at ')
ended=$(field 'NESTED-KVM-END at ')
times=
[ -z "$started" ] || times="outer boot ${started%% *} s, "
[ -z "$started" ] || [ -z "$ended" ] || times+="$VMM $(since "${ended%% *}" "${started%% *}") s, "
times+="total $(since) s"
keep=
[ "$LOG" = "$TMP/serial.log" ] || keep="; log: $LOG"
# Where the outer VM's vCPUs were when the deadline passed (only in the log so far).
sed -n '/^NESTED-KVM-DEADLINE/,$p' "$LOG" >&2
if [ -n "$SIGNALLED" ]; then
	die "stopped by a signal ($times$keep)"
elif [ -n "$exit_status" ]; then
	[[ $exit_status =~ ^[0-9]+$ ]] || die "unreadable status line NESTED-KVM-EXIT=$exit_status ($times)"
	log "$VMM exited with status $exit_status ($times)"
	exit "$exit_status"
elif [ -n "$error" ]; then
	die "the outer VM could not run $VMM: $error ($times$keep)"
elif grep -qa '^NESTED-KVM-DEADLINE' "$LOG"; then
	die "the deadline (--timeout $TIMEOUT) passed $([ -n "$started" ] && echo "while $VMM ran" || echo "before the outer VM started $VMM") ($times$keep)"
else
	die "the outer VM ended (QEMU status $QEMU_STATUS) without a $VMM status ($times$keep)"
fi
