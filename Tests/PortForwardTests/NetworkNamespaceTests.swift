import Foundation
import Testing
@testable import PortForward
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

@Suite("Network namespace files")
struct NetworkNamespaceTests {
    @Test("What is and is not a network namespace, said without blocking")
    func networkNamespaces() throws {
        let directory = try TemporaryDirectory()
        #expect(NetworkNamespace.check("/proc/self/ns/net") == nil)
        #expect(NetworkNamespace.check(directory.path + "/missing")?.description == "\(directory.path)/missing does not exist")
        #expect(NetworkNamespace.check("/proc/999999999/ns/net")?.description == "/proc/999999999/ns/net does not exist")
        #expect(NetworkNamespace.check(directory.path)?.description == "\(directory.path) is not a network namespace (it is a directory)")
        #expect(NetworkNamespace.check("/dev/null")?.description == "/dev/null is not a network namespace (it is a character device)")
        let file = directory.path + "/file"
        try "".write(toFile: file, atomically: true, encoding: .utf8)
        #expect(NetworkNamespace.check(file)?.description == "\(file) is not a network namespace (it is a regular file)")
        #expect(NetworkNamespace.check("/proc/self/ns/mnt")?.description == "/proc/self/ns/mnt is not a network namespace (it is a namespace of another kind)")

        let fifo = directory.path + "/fifo"
        #expect(mkfifo(fifo, 0o644) == 0)
        let writer = DelayedFIFOWriter(fifo, after: 5)
        let started = Date()
        #expect(NetworkNamespace.check(fifo)?.description == "\(fifo) is not a network namespace (it is a FIFO)")
        #expect(Date().timeIntervalSince(started) < 2)
        writer.cancel()
    }

    @Test("A real namespace made with ip netns add is one; once deleted, it does not exist")
    func realNamespace() throws {
        let namespace = try RealNetworkNamespace()
        #expect(NetworkNamespace.check(namespace.path) == nil)
        let fd = try NetworkNamespace.open(namespace.path)
        #expect(fd >= 0)
        close(fd)
        try namespace.delete()
        #expect(NetworkNamespace.check(namespace.path)?.description == "\(namespace.path) does not exist")
    }
}
