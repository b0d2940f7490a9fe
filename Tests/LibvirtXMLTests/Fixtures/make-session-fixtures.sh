#!/bin/bash
# Fixtures from a real per-user libvirt daemon (qemu:///session, Debian 12's libvirt-daemon 9.0.0 with
# libvirt-daemon-driver-qemu; the daemon is started by virsh itself), run as the unprivileged user
# nobody with a private HOME, as root cannot have a session daemon:
#   session-defined.xml   virt-install's XML for the test kernel, after virsh define (virsh dumpxml --inactive)
#   session-running.xml   the same domain started (QEMU, TCG: nobody has no /dev/kvm), virsh dumpxml while it runs
# The exact commands are in the .cmd files beside them. Run as root from this folder.
set -euo pipefail
cd "$(dirname "$0")"
S=/tmp/swiftkvm-libvirt-session
K=/var/cache/swiftkvm/test-kernel/bzImage
I=/var/cache/swiftkvm/test-initramfs.cpio
mkdir -p $S && chown nobody $S
[ -e $S/root.img ] || { truncate -s 64M $S/root.img; chown nobody $S/root.img; }
as_nobody() { runuser -u nobody -- env HOME=$S XDG_RUNTIME_DIR=$S/run XDG_CONFIG_HOME=$S/config XDG_CACHE_HOME=$S/cache "$@"; }
V="virsh -c qemu:///session"
as_nobody $V destroy session-test >/dev/null 2>&1 || true
as_nobody $V undefine session-test >/dev/null 2>&1 || true
as_nobody virt-install --connect qemu:///session --print-xml --osinfo detect=off,require=off --noautoconsole --graphics none \
    --name session-test --memory 256 --vcpus 1 \
    --boot "kernel=$K,initrd=$I,kernel_args=console=ttyS0 reboot=k panic=-1 quiet" \
    --disk path=$S/root.img,format=raw,bus=virtio --network user,model=virtio --console pty > $S/session-test.xml
printf '%s\n' "virt-install --connect qemu:///session --print-xml --osinfo detect=off,require=off --noautoconsole --graphics none --name session-test --memory 256 --vcpus 1 --boot 'kernel=$K,initrd=$I,kernel_args=console=ttyS0 reboot=k panic=-1 quiet' --disk path=$S/root.img,format=raw,bus=virtio --network user,model=virtio --console pty > session-test.xml && virsh -c qemu:///session define session-test.xml && virsh -c qemu:///session dumpxml --inactive session-test" > session-defined.cmd
as_nobody $V define $S/session-test.xml >/dev/null
as_nobody $V dumpxml --inactive session-test > session-defined.xml
printf '%s\n' "virsh -c qemu:///session start session-test && virsh -c qemu:///session dumpxml session-test (while it runs; then virsh destroy and undefine)" > session-running.cmd
as_nobody $V start session-test >/dev/null
as_nobody $V dumpxml session-test > session-running.xml
as_nobody $V destroy session-test >/dev/null
as_nobody $V undefine session-test >/dev/null
