// api-mock-server SOCKET: the control API on a Unix socket, answered by a MockVMController (no VM,
// no KVM), for Tests/api/schemathesis.sh and for trying the API with curl. Runs until SIGINT or
// SIGTERM, then removes its socket.
import ControlAPI
import ControlAPIMock
#if canImport(Glibc)
import Glibc
#endif

let arguments = CommandLine.arguments
guard arguments.count == 2, !arguments[1].hasPrefix("-") else {
    fputs("usage: api-mock-server SOCKET-PATH\n", stderr)
    exit(2)
}
// Block SIGINT and SIGTERM before the server thread exists (it inherits the mask), and wait for
// them with sigwait, so stop() runs on this thread and removes the socket.
var signals = sigset_t()
sigemptyset(&signals)
sigaddset(&signals, SIGINT)
sigaddset(&signals, SIGTERM)
pthread_sigmask(SIG_BLOCK, &signals, nil)
let server = ControlServer(path: arguments[1], controller: MockVMController())
do {
    try server.start()
} catch {
    fputs("api-mock-server: \(error)\n", stderr)
    exit(1)
}
print("api-mock-server: listening on \(arguments[1])")
fflush(stdout)
var received: Int32 = 0
sigwait(&signals, &received)
server.stop()
