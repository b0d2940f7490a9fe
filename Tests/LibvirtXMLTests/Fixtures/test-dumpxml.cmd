virsh -c test:///default dumpxml test
