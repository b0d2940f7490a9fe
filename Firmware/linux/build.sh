#!/usr/bin/env bash
# Build SwiftKVM's Linux guest assets into a cache outside the clone.
#
#   Firmware/linux/build.sh [test-kernel|test-initramfs|stock|rootfs|all]...   (default: all)
#
# Cache: ${SWIFTKVM_CACHE:-/var/cache/swiftkvm}
#   test-kernel/{bzImage,vmlinux,config,key}   small kernel from linux-source-6.1 + patches/
#   test-initramfs.cpio.gz (+ .key)            busybox-static, init/test-init, tools/blkbench
#   test-initramfs.cpio                        the same, uncompressed (boots faster on KVM-PVM)
#   stock-kernel/{bzImage,config,version,key}  Debian's linux-image-amd64 kernel
#   stock-initramfs.cpio.gz (+ .key)           busybox-static + virtio/ext4/pvpanic modules, init/stock-init
#   test-rootfs.ext4 (+ .key)                  ext4 root file system (busybox-static,
#                                              init/rootfs-init) for root=/dev/vda
#   debs/                                      downloaded .deb files
#   build/                                     scratch (kernel tree; removed after a good build
#                                              unless KEEP_BUILD=1)
# Each output is rebuilt only when the sha256 of its inputs (config fragment,
# patches, init script, package versions, compiler, recipe) differs from the
# key stored beside it. FORCE=1 rebuilds anyway.
#
# Environment: SWIFTKVM_CACHE, JOBS (make -j, default 2), NICE (default 10),
#              KEEP_BUILD=1, FORCE=1.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${SWIFTKVM_CACHE:-/var/cache/swiftkvm}
JOBS=${JOBS:-2}
NICE=${NICE:-10}
PYTHON=${PYTHON:-python3}
# Bump when the recipe below changes in a way that changes the outputs.
RECIPE=1

KERNEL_SRC_PKG=linux-source-6.1
KERNEL_BUILD_DEPS=(build-essential bc flex bison libelf-dev libssl-dev cpio lz4 xz-utils kmod python3)

log() { printf '[guest] %s\n' "$*" >&2; }
die() { printf '[guest] error: %s\n' "$*" >&2; exit 1; }

# --- packages -------------------------------------------------------------------

APT_UPDATED=
apt_update_once() {
	[ -n "$APT_UPDATED" ] && return
	log "apt-get update"
	apt-get update -q >&2
	APT_UPDATED=1
}

# Candidate version of a package in apt's lists (updating them if apt knows nothing).
pkg_candidate() {
	local v
	v=$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}')
	if [ -z "$v" ] || [ "$v" = "(none)" ]; then
		apt_update_once
		v=$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}')
	fi
	[ -n "$v" ] && [ "$v" != "(none)" ] || die "apt knows no package $1"
	echo "$v"
}

ensure_installed() {
	local missing=() p
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return
	log "installing ${missing[*]}"
	for p in "${missing[@]}"; do pkg_candidate "$p" >/dev/null; done
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 || {
		apt_update_once
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
	}
}

installed_version() { dpkg-query -W -f='${Version}' "$1"; }

# Download PKG=VERSION into $CACHE/debs (once) and print the .deb's path.
fetch_deb() {
	local pkg=$1 ver=$2 dir f
	dir="$CACHE/debs/$pkg/$ver"
	f=$(ls "$dir"/*.deb 2>/dev/null | head -n1 || true)
	if [ -z "$f" ]; then
		log "apt-get download $pkg=$ver"
		mkdir -p "$dir.tmp"
		(cd "$dir.tmp" && apt-get download -q -o APT::Sandbox::User=root "$pkg=$ver" >&2) || {
			apt_update_once
			(cd "$dir.tmp" && apt-get download -q -o APT::Sandbox::User=root "$pkg=$ver" >&2)
		}
		rm -rf "$dir" && mv "$dir.tmp" "$dir"
		f=$(ls "$dir"/*.deb | head -n1)
	fi
	echo "$f"
}

# --- keys -------------------------------------------------------------------------

# key NAME FILE...: sha256 over a manifest of named values and file contents.
# Values come on stdin as "name=value" lines.
make_key() {
	{
		echo "recipe=$RECIPE"
		cat
		local f
		for f in "$@"; do
			echo "file=${f#"$HERE"/}"
			cat "$f"
		done
	} | sha256sum | cut -d' ' -f1
}

up_to_date() { # up_to_date KEYFILE KEY OUTPUT...
	local keyfile=$1 key=$2
	shift 2
	[ -z "${FORCE:-}" ] || return 1
	[ -f "$keyfile" ] && [ "$(cat "$keyfile")" = "$key" ] || return 1
	local o
	for o in "$@"; do [ -s "$o" ] || return 1; done
}

# --- busybox ------------------------------------------------------------------------

BUSYBOX_VERSION=
busybox_version() {
	[ -n "$BUSYBOX_VERSION" ] || BUSYBOX_VERSION=$(pkg_candidate busybox-static)
	echo "$BUSYBOX_VERSION"
}

# Extract Debian's amd64 busybox-static into DIR; prints the binary's path.
extract_busybox() {
	local dir=$1 deb
	deb=$(fetch_deb busybox-static "$(busybox_version)")
	dpkg-deb -x "$deb" "$dir"
	[ -x "$dir/bin/busybox" ] || die "no bin/busybox in $deb"
	echo "$dir/bin/busybox"
}

# The applets a shell session needs (each one is a symlink in /bin).
APPLETS="sh ash cat echo printf ls mount umount mkdir rmdir rm cp mv ln chmod touch
	uname head tail grep sed awk wc sort cut tr tee xargs find which env test [ true false
	sleep date ps kill dmesg free uptime sync dd od hexdump stty tty clear setsid cttyhack
	reboot poweroff halt insmod lsmod mknod mdev hostname id md5sum cmp blockdev"

# Only in the test initramfs (the virtio-net tests): configure a NIC, get a DHCP
# lease, fetch and serve files.
NET_APPLETS="ip ifconfig route ping udhcpc wget nc httpd netstat arp"

# Write the common part of a busybox initramfs list to stdout.
busybox_list() { # busybox_list BUSYBOX INIT
	local bb=$1 init=$2 a
	cat <<-EOF
	dir /bin 755
	dir /dev 755
	nod /dev/console 600 c 5 1
	nod /dev/null 666 c 1 3
	dir /proc 755
	dir /sys 755
	dir /tmp 1777
	dir /root 700
	dir /etc 755
	file /bin/busybox $bb 755
	file /init $init 755
	EOF
	for a in $APPLETS; do echo "slink /bin/$a busybox 777"; done
}

# pack LIST OUT.cpio.gz [keep]: newc cpio, gzip -9, reproducible; with "keep"
# the uncompressed OUT.cpio stays too.
pack() {
	local list=$1 out=$2 keep=${3:-}
	"$PYTHON" "$HERE/mkcpio.py" "$list" "$out.cpio.tmp"
	gzip -9 -n -c "$out.cpio.tmp" >"$out.tmp"
	if [ -n "$keep" ]; then mv "$out.cpio.tmp" "${out%.gz}"; else rm -f "$out.cpio.tmp"; fi
	mv "$out.tmp" "$out"
}

# --- (a) test kernel ----------------------------------------------------------------

build_test_kernel() {
	ensure_installed "$KERNEL_SRC_PKG" "${KERNEL_BUILD_DEPS[@]}"
	local tarball=/usr/src/$KERNEL_SRC_PKG.tar.xz
	[ -f "$tarball" ] || die "$tarball missing (package $KERNEL_SRC_PKG)"
	local patches=("$HERE"/patches/*.patch)
	local key
	key=$(printf '%s\n' \
		"source=$KERNEL_SRC_PKG $(installed_version "$KERNEL_SRC_PKG")" \
		"gcc=$(gcc --version | head -n1)" \
		"binutils=$(ld --version | head -n1)" |
		make_key "$HERE/test-kernel.config" "${patches[@]}")
	local out="$CACHE/test-kernel"
	if up_to_date "$out/key" "$key" "$out/bzImage" "$out/config"; then
		log "test kernel up to date: $out/bzImage (key ${key:0:12})"
		return
	fi

	local src="$CACHE/build/test-kernel-${key:0:16}"
	log "test kernel: building in $src (key ${key:0:12})"
	rm -rf "$src"
	mkdir -p "$src"
	tar -xf "$tarball" -C "$src" --strip-components=1
	local p
	for p in "${patches[@]}"; do
		log "patch ${p##*/}"
		patch -s -d "$src" -p1 --forward --batch --no-backup-if-mismatch <"$p" >&2 ||
			die "patch ${p##*/} does not apply to $KERNEL_SRC_PKG $(installed_version "$KERNEL_SRC_PKG")"
	done

	local kmake=(make -C "$src" KBUILD_BUILD_USER=swiftkvm KBUILD_BUILD_HOST=swiftkvm)
	log "config: tinyconfig + test-kernel.config"
	{
		"${kmake[@]}" -s tinyconfig &&
			(cd "$src" && scripts/kconfig/merge_config.sh -m .config "$HERE/test-kernel.config") &&
			"${kmake[@]}" -s olddefconfig
	} >"$src/config.log" 2>&1 || { cat "$src/config.log" >&2; die "kernel configuration failed"; }
	check_config "$src/.config" "$HERE/test-kernel.config"

	local t0=$SECONDS
	nice -n "$NICE" "${kmake[@]}" -j"$JOBS" bzImage >"$src/build.log" 2>&1 || {
		tail -n 40 "$src/build.log" >&2
		die "kernel build failed (log: $src/build.log)"
	}
	log "test kernel built in $((SECONDS - t0)) s"

	rm -rf "$out.tmp"
	mkdir -p "$out.tmp"
	cp "$src/arch/x86/boot/bzImage" "$out.tmp/bzImage"
	cp "$src/vmlinux" "$out.tmp/vmlinux"
	cp "$src/.config" "$out.tmp/config"
	cp "$src/System.map" "$out.tmp/System.map"
	cp "$src/include/config/kernel.release" "$out.tmp/release"
	echo "$key" >"$out.tmp/key"
	rm -rf "$out"
	mv "$out.tmp" "$out"
	[ -n "${KEEP_BUILD:-}" ] || rm -rf "$src"
	log "test kernel: $out/bzImage ($(cat "$out/release"))"
}

# Every line of the fragment must hold in the merged .config (Kconfig drops a
# symbol whose dependencies are unmet without an error).
check_config() {
	local config=$1 fragment=$2 line sym bad=0
	while IFS= read -r line; do
		case "$line" in
		CONFIG_*=*)
			grep -qxF -- "$line" "$config" || { log "config: wanted $line, got: $(grep -E "^${line%%=*}=|^# ${line%%=*} is not set" "$config" || echo absent)"; bad=1; } ;;
		"# CONFIG_"*" is not set")
			sym=${line#\# }
			sym=${sym%% *}
			! grep -q "^$sym=" "$config" || { log "config: wanted $line, got: $(grep "^$sym=" "$config")"; bad=1; } ;;
		esac
	done <"$fragment"
	[ $bad -eq 0 ] || die "the merged kernel config lost settings of ${fragment##*/}"
}

# --- (b) test initramfs ---------------------------------------------------------------

build_test_initramfs() {
	ensure_installed gzip python3 gcc
	local key out="$CACHE/test-initramfs.cpio.gz"
	key=$(printf '%s\n' "busybox-static=$(busybox_version)" "applets=$APPLETS $NET_APPLETS" "gcc=$(gcc -dumpfullversion)" |
		make_key "$HERE/init/test-init" "$HERE/init/udhcpc.script" "$HERE/mkcpio.py" "$HERE/build.sh" "$HERE/tools/blkbench.c")
	if up_to_date "$out.key" "$key" "$out" "${out%.gz}"; then
		log "test initramfs up to date: $out"
		return
	fi
	local tmp bb
	tmp=$(mktemp -d "$CACHE/build/initramfs.XXXXXX")
	bb=$(extract_busybox "$tmp/bb")
	busybox_list "$bb" "$HERE/init/test-init" >"$tmp/list"
	# blkbench (tools/blkbench.c): O_DIRECT read throughput from inside the guest, for make bench.
	gcc -static -nostdlib -ffreestanding -fno-builtin -O2 -fno-stack-protector -fno-pie -no-pie \
		-o "$tmp/blkbench" "$HERE/tools/blkbench.c" || die "cannot build tools/blkbench.c"
	echo "file /bin/blkbench $tmp/blkbench 755" >>"$tmp/list"
	# Networking for virtio-net tests: busybox's network applets and udhcpc's script, where
	# Debian's busybox looks for it (/etc/udhcpc/default.script; upstream's is under /usr/share).
	{
		for a in $NET_APPLETS; do echo "slink /bin/$a busybox 777"; done
		echo "dir /etc/udhcpc 755"
		echo "file /etc/udhcpc/default.script $HERE/init/udhcpc.script 755"
	} >>"$tmp/list"
	# Also keep the uncompressed archive: on KVM-PVM the kernel's gunzip of
	# ~1 MB (emulated ring 0) costs ~45 s of the boot.
	pack "$tmp/list" "$out" keep
	echo "$key" >"$out.key"
	rm -rf "$tmp"
	log "test initramfs: $out ($(stat -c %s "$out") bytes), ${out%.gz} ($(stat -c %s "${out%.gz}") bytes)"
}

# --- (c) Debian's stock kernel + module initramfs ------------------------------------

STOCK_MODULES="virtio virtio_ring virtio_mmio virtio_pci virtio_blk virtio_net crc32c_generic ext4 pvpanic pvpanic_mmio"

build_stock() {
	ensure_installed gzip xz-utils zstd kmod python3
	# linux-image-amd64 is a meta package: its dependency is the real image.
	local meta_ver image image_ver
	meta_ver=$(pkg_candidate linux-image-amd64)
	image=$(apt-cache show "linux-image-amd64=$meta_ver" | awk -F': ' '/^Depends:/ {print $2; exit}' |
		tr ',' '\n' | sed 's/[ (].*//; s/^ *//' | grep -E '^linux-image-[0-9].*-amd64$' | head -n1)
	[ -n "$image" ] || die "cannot find the image package linux-image-amd64 $meta_ver depends on"
	image_ver=$(pkg_candidate "$image")

	local kkey ikey
	kkey=$(printf '%s\n' "image=$image $image_ver" | make_key)
	ikey=$(printf '%s\n' "image=$image $image_ver" "busybox-static=$(busybox_version)" \
		"modules=$STOCK_MODULES" "applets=$APPLETS" |
		make_key "$HERE/init/stock-init" "$HERE/mkcpio.py" "$HERE/pack-modules.py" "$HERE/build.sh")
	local kout="$CACHE/stock-kernel" iout="$CACHE/stock-initramfs.cpio.gz"
	if up_to_date "$kout/key" "$kkey" "$kout/bzImage" &&
		up_to_date "$iout.key" "$ikey" "$iout"; then
		log "stock kernel and initramfs up to date: $kout/bzImage $iout"
		return
	fi

	local deb tmp kver
	deb=$(fetch_deb "$image" "$image_ver")
	tmp=$(mktemp -d "$CACHE/build/stock.XXXXXX")
	log "extracting $image $image_ver"
	dpkg-deb -x "$deb" "$tmp/pkg"
	kver=$(ls "$tmp/pkg/lib/modules" | head -n1)
	[ -f "$tmp/pkg/boot/vmlinuz-$kver" ] || die "no /boot/vmlinuz-$kver in $deb"

	rm -rf "$kout.tmp"
	mkdir -p "$kout.tmp"
	cp "$tmp/pkg/boot/vmlinuz-$kver" "$kout.tmp/bzImage"
	cp "$tmp/pkg/boot/config-$kver" "$kout.tmp/config" 2>/dev/null || true
	echo "$kver" >"$kout.tmp/version"
	echo "$kkey" >"$kout.tmp/key"
	rm -rf "$kout"
	mv "$kout.tmp" "$kout"

	# modules.dep is made by depmod at install time; make it for the extracted tree.
	depmod -b "$tmp/pkg" "$kver"
	local mods="$tmp/pkg/lib/modules/$kver"
	local bb
	bb=$(extract_busybox "$tmp/bb")
	busybox_list "$bb" "$HERE/init/stock-init" >"$tmp/list"
	{
		echo "dir /lib 755"
		echo "dir /lib/modules 755"
	} >>"$tmp/list"
	# The wanted modules that are not built in, dependencies first, and their load-order file.
	"$PYTHON" "$HERE/pack-modules.py" "$mods" "$tmp" $STOCK_MODULES >>"$tmp/list" ||
		die "cannot pack the modules $STOCK_MODULES"
	pack "$tmp/list" "$iout"
	echo "$ikey" >"$iout.key"
	log "stock kernel: $kout/bzImage ($kver); initramfs: $iout ($(stat -c %s "$iout") bytes), modules: $(tr '\n' ' ' <"$tmp/load-order")"
	rm -rf "$tmp"
}

# --- (d) ext4 root file system ---------------------------------------------------------

# 16 MiB: busybox (about 2 MB) and room for what tests write.
ROOTFS_SIZE=16M
# Fixed so the image is the same on every machine (mke2fs otherwise draws them at random).
ROOTFS_UUID=5a1f7c3e-0b6d-4e2a-9c81-53d4b2a6e7f0

build_rootfs() {
	ensure_installed e2fsprogs
	local key out="$CACHE/test-rootfs.ext4"
	key=$(printf '%s\n' "busybox-static=$(busybox_version)" "applets=$APPLETS" "size=$ROOTFS_SIZE" \
		"e2fsprogs=$(dpkg-query -W -f='${Version}' e2fsprogs)" |
		make_key "$HERE/init/rootfs-init" "$HERE/build.sh")
	if up_to_date "$out.key" "$key" "$out"; then
		log "ext4 root image up to date: $out"
		return
	fi
	local tmp bb a
	tmp=$(mktemp -d "$CACHE/build/rootfs.XXXXXX")
	bb=$(extract_busybox "$tmp/bb")
	mkdir -p "$tmp/root"/{bin,sbin,dev,proc,sys,tmp,root,etc}
	chmod 1777 "$tmp/root/tmp"
	chmod 700 "$tmp/root/root"
	cp "$bb" "$tmp/root/bin/busybox"
	for a in $APPLETS; do ln -s busybox "$tmp/root/bin/$a"; done
	install -m 755 "$HERE/init/rootfs-init" "$tmp/root/sbin/init"
	echo "key ${key:0:12}" >"$tmp/root/etc/swiftkvm-rootfs"
	# The kernel opens /dev/console before devtmpfs is mounted over /dev.
	mknod -m 600 "$tmp/root/dev/console" c 5 1
	rm -f "$out.tmp"
	E2FSPROGS_FAKE_TIME=1700000000 mke2fs -q -F -t ext4 -L swiftkvm-root -U "$ROOTFS_UUID" \
		-E "hash_seed=$ROOTFS_UUID,root_owner=0:0" -d "$tmp/root" "$out.tmp" "$ROOTFS_SIZE" ||
		die "mke2fs failed"
	e2fsck -fn "$out.tmp" >/dev/null 2>&1 || die "the new ext4 image fails e2fsck"
	mv "$out.tmp" "$out"
	echo "$key" >"$out.key"
	rm -rf "$tmp"
	log "ext4 root image: $out ($ROOTFS_SIZE)"
}

# --- main ---------------------------------------------------------------------------

[ "$(id -u)" = 0 ] || [ -w "$CACHE" ] || die "run as root (apt-get) or make $CACHE writable"
mkdir -p "$CACHE/build" "$CACHE/debs"
# One build at a time per cache.
exec 9>"$CACHE/.lock"
flock 9

[ $# -gt 0 ] || set -- all
for what in "$@"; do
	case "$what" in
	test-kernel) build_test_kernel ;;
	test-initramfs) build_test_initramfs ;;
	stock) build_stock ;;
	rootfs) build_rootfs ;;
	all) build_test_kernel; build_test_initramfs; build_stock; build_rootfs ;;
	*) die "unknown target $what (test-kernel, test-initramfs, stock, rootfs, all)" ;;
	esac
done
