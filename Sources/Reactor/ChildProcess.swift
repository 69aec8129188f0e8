#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// Starting helper processes (the nsenter connector's socat, the bench's relay and target server).
public enum ChildProcess {
    /// Starts `arguments` (looked up in PATH) with the given descriptors as its standard input,
    /// output and error (nil: the parent's). The parent blocks signals for its signalfd and
    /// ignores SIGPIPE; the child starts with neither. `environment` ("NAME=value" each; nil:
    /// the parent's). Returns the child's pid.
    public static func spawn(_ arguments: [String], stdin: FileDescriptor? = nil, stdout: FileDescriptor? = nil,
                             stderr: FileDescriptor? = nil, environment: [String]? = nil) throws -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        for (fd, target) in [(stdin, Int32(0)), (stdout, 1), (stderr, 2)] {
            if let fd { posix_spawn_file_actions_adddup2(&actions, fd, target) }
        }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attributes, &empty)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in [SIGPIPE, SIGINT, SIGTERM, SIGHUP] { sigaddset(&defaults, signal) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        let argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        let envp: [UnsafeMutablePointer<CChar>?]? = environment.map { $0.map { strdup($0) } + [nil] }
        defer { for pointer in envp ?? [] { free(pointer) } }
        var pid: pid_t = 0
        let status = envp.map { envp in
            envp.withUnsafeBufferPointer { posix_spawnp(&pid, arguments[0], &actions, &attributes, argv, $0.baseAddress) }
        } ?? posix_spawnp(&pid, arguments[0], &actions, &attributes, argv, environ)
        guard status == 0 else { throw SystemError("cannot run \(arguments[0])", errno: status) }
        return pid
    }
}
