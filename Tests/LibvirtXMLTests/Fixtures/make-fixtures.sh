#!/bin/bash
# Regenerates the fixtures in this folder with libvirt's own tools (Debian 12: virtinst 4.1.0,
# libvirt-clients 9.0.0), no daemon: test:///default is libvirt's in-process test driver.
# Each fixture NAME.xml has its exact command in NAME.cmd. The UUIDs and MAC addresses virt-install
# makes up differ on every run, so the tests' expectations may need those updated if this is rerun.
set -euo pipefail
cd "$(dirname "$0")"
K=/var/cache/swiftkvm/test-kernel/bzImage
I=/var/cache/swiftkvm/test-initramfs.cpio
D=/tmp/swiftkvm-libvirt-fixtures
mkdir -p $D
for f in root.img data.img a.img b.img c.img; do [ -e $D/$f ] || truncate -s 64M $D/$f; done
[ -e $D/disk.qcow2 ] || truncate -s 64M $D/disk.qcow2
COMMON="--connect test:///default --print-xml --osinfo detect=off,require=off --noautoconsole --graphics none"
make() {
    local name=$1; shift
    printf '%s\n' "$*" > $name.cmd
    eval "$@" > $name.xml
}
make no-initrd virt-install $COMMON --name no-initrd --memory 256 --vcpus 1 \
    --boot "kernel=$K,kernel_args='console=ttyS0 reboot=k panic=-1'" --disk none --network none --console pty
make test-kernel virt-install $COMMON --name test-kernel --memory 256 --vcpus 1 \
    --boot "kernel=$K,initrd=$I,kernel_args='console=ttyS0 reboot=k panic=-1 quiet'" \
    --disk path=$D/root.img,driver.name=qemu,driver.type=raw,bus=virtio --network none --console pty
make two-disks virt-install $COMMON --name two-disks --memory 512 --vcpus 1 \
    --boot "kernel=$K,initrd=$I,kernel_args='console=ttyS0 root=/dev/vda'" \
    --disk path=$D/root.img,driver.name=qemu,driver.type=raw,bus=virtio --disk path=$D/data.img,driver.name=qemu,driver.type=raw,bus=virtio,readonly=on \
    --network none --console pty
make explicit-targets virt-install $COMMON --name explicit-targets --memory 256 --vcpus 1 \
    --boot "kernel=$K,kernel_args='console=ttyS0'" \
    --disk path=$D/c.img,driver.name=qemu,driver.type=raw,bus=virtio,target=vdc --disk path=$D/a.img,driver.name=qemu,driver.type=raw,bus=virtio,target=vda \
    --disk path=$D/b.img,driver.name=qemu,driver.type=raw,bus=virtio,target=vdb,shareable=on --network none --console pty
make four-cpus-1g virt-install $COMMON --name four-cpus-1g --memory 1024 --vcpus 4 \
    --boot "kernel=$K,initrd=$I,kernel_args='console=ttyS0'" --disk none --network none --console pty
make on-actions virt-install $COMMON --name on-actions --memory 256 --vcpus 1 \
    --boot "kernel=$K,kernel_args='console=ttyS0'" --disk none --network none --console pty \
    --events on_poweroff=preserve,on_reboot=restart,on_crash=coredump-destroy
make console-log virt-install $COMMON --name console-log --memory 256 --vcpus 1 \
    --boot "kernel=$K,kernel_args='console=ttyS0'" --disk none --network none \
    --console pty,log.file=/tmp/swiftkvm-console.log,log.append=on
make serial-file virt-install $COMMON --name serial-file --memory 256 --vcpus 1 \
    --boot "kernel=$K,kernel_args='console=ttyS0'" --disk none --network none \
    --serial file,path=/tmp/swiftkvm-serial.out
make special-cmdline virt-install $COMMON --name special-cmdline --memory 256 --vcpus 1 \
    --boot "kernel=$K,kernel_args='console=ttyS0  init=/bin/sh -c \"echo a<b && echo \\\$HOME\"  x=1'" \
    --disk none --network none --console pty
make spice virt-install --connect test:///default --print-xml --osinfo detect=off,require=off --noautoconsole \
    --name spice --memory 256 --vcpus 1 --boot "kernel=$K,kernel_args='console=ttyS0'" \
    --disk path=$D/root.img,driver.name=qemu,driver.type=raw,bus=virtio --network none --graphics spice --console pty
make qcow2 virt-install $COMMON --name qcow2 --memory 256 --vcpus 1 --boot "kernel=$K,kernel_args='console=ttyS0'" \
    --disk path=$D/root.img,driver.name=qemu,driver.type=raw,bus=virtio --disk path=$D/disk.qcow2,driver.name=qemu,driver.type=qcow2,bus=virtio --network none --console pty
make nic-ethernet virt-install $COMMON --name nic-ethernet --memory 256 --vcpus 1 --boot "kernel=$K,kernel_args='console=ttyS0'" \
    --disk none --network type=ethernet,target.dev=tap0,model.type=virtio,mac.address=52:54:00:12:34:56 --console pty
make nic-user virt-install $COMMON --name nic-user --memory 256 --vcpus 1 --boot "kernel=$K,kernel_args='console=ttyS0'" \
    --disk none --console pty \
    --network "type=user,model.type=virtio,mac.address=52:54:00:12:34:57,xpath0.set=./backend/@type=passt,xpath1.set=./portForward/@proto=tcp,xpath2.set=./portForward/@address=127.0.0.1,xpath3.set=./portForward/range/@start=2222,xpath4.set=./portForward/range/@to=22"
make nic-network virt-install $COMMON --name nic-network --memory 256 --vcpus 1 --boot "kernel=$K,kernel_args='console=ttyS0'" \
    --disk none --network network=default,model.type=virtio --console pty
make nic-bridge virt-install $COMMON --name nic-bridge --memory 256 --vcpus 1 --boot "kernel=$K,kernel_args='console=ttyS0'" \
    --disk none --network bridge=br0,model.type=virtio --console pty
make disk-boot virt-install $COMMON --name disk-boot --memory 256 --vcpus 1 --import \
    --disk path=$D/root.img,driver.name=qemu,driver.type=raw,bus=virtio --network none --console pty
make test-dumpxml virsh -c test:///default dumpxml test
