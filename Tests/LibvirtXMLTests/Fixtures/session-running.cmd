virsh -c qemu:///session start session-test && virsh -c qemu:///session dumpxml session-test (while it runs; then virsh destroy and undefine)
