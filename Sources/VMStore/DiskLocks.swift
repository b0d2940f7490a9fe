import Glibc
import VMConfig

/// Disk images locked for as long as a VMM runs: a disk opened read-write is `flock`ed
/// exclusively, a read-only one shared, so a read-write disk is refused to a second VM and
/// read-only disks can be shared; `shareable` disks are not locked at all. The kernel drops the
/// locks with the process, however it ends.
public final class DiskLocks: @unchecked Sendable {
    private var descriptors: [Int32] = []

    private init() {}

    deinit { for fd in descriptors { close(fd) } }

    /// Locks every disk of `configuration` (VM `name`), or says which VM holds a disk it needs.
    public static func acquire(for configuration: VMConfiguration, name: String, store: VMStore) throws(StoreError) -> DiskLocks {
        let locks = DiskLocks()
        for disk in configuration.disks where !disk.shareable {
            let fd = open(disk.path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { throw .system("open", disk.path) }
            locks.descriptors.append(fd)
            var taken = false
            while true {
                if flock(fd, (disk.readOnly ? LOCK_SH : LOCK_EX) | LOCK_NB) == 0 {
                    taken = true
                    break
                }
                if errno != EINTR { break }
            }
            if taken { continue }
            let holder = holders(of: disk.path, except: name, store: store)
            let who = holder.isEmpty ? "another process" : holder.map { "VM '\($0.name)'\($0.readOnly ? " (read-only)" : " (read-write)")" }.joined(separator: ", ")
            let mine = disk.readOnly ? "read-only" : "read-write"
            throw StoreError(
                .running,
                "disk \(disk.path) is in use by \(who); VM '\(name)' cannot open it \(mine): stop the other VM, make the disk readonly in both, or mark it shareable")
        }
        return locks
    }

    /// The running VMs (other than `name`) whose definitions name the file at `path`.
    static func holders(of path: String, except name: String, store: VMStore) -> [(name: String, readOnly: Bool)] {
        var wanted = stat()
        guard stat(path, &wanted) == 0 else { return [] }
        var found: [(String, Bool)] = []
        for other in store.names() where other != name {
            guard let folder = try? store.folder(other), folder.isLocked, let definition = try? folder.definition() else { continue }
            for disk in definition.disks {
                var info = stat()
                if stat(disk.path, &info) == 0, info.st_dev == wanted.st_dev, info.st_ino == wanted.st_ino { found.append((other, disk.readOnly)) }
            }
        }
        return found
    }
}
