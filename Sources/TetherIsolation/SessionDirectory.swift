#if os(Linux)
import Glibc

/// The per-session directories under the run directory. A container sees only its own (bind
/// mounted), creates its socket there while it starts, and loses write access before the
/// relay sends it anything (`lock`): a container cannot fill the host's disk or plant files.
/// Cleanup never follows a symbolic link a container may have left.
public enum SessionDirectory {
    public struct Failure: Error, Sendable, CustomStringConvertible {
        public let description: String
    }

    /// The run directory itself: created if missing, traversable but not listable by others
    /// (0711), so a session's path is only usable by whoever knows its id.
    public static func prepareRoot(_ root: String) throws(Failure) {
        var path = ""
        for part in root.split(separator: "/") {
            path += "/" + part
            if mkdir(path, 0o755) != 0 && errno != EEXIST {
                throw Failure(description: "mkdir \(path): \(text(errno))")
            }
        }
        _ = chmod(root, 0o711)
    }

    /// A fresh, empty directory for a session: the relay's user owns it, the container's group
    /// may create its socket (0770 until `lock`).
    public static func prepare(_ directory: String, gid: UInt32) throws(Failure) {
        try remove(directory)
        guard mkdir(directory, 0o770) == 0 else { throw Failure(description: "mkdir \(directory): \(text(errno))") }
        // chmod after mkdir: the umask must not narrow it.
        guard chown(directory, uid_t.max, gid_t(gid)) == 0, chmod(directory, 0o770) == 0 else {
            let e = errno
            _ = rmdir(directory)
            throw Failure(description: "chown/chmod \(directory) to group \(gid): \(text(e)) (the relay needs root or membership of that group)")
        }
    }

    /// The worker's socket exists: from now on the container may use it but create nothing.
    public static func lock(_ directory: String) {
        _ = chmod(directory, 0o750)
    }

    /// Removes the directory and whatever is in it, without following symbolic links.
    public static func remove(_ directory: String) throws(Failure) {
        var st = stat()
        guard lstat(directory, &st) == 0 else {
            if errno == ENOENT { return }
            throw Failure(description: "lstat \(directory): \(text(errno))")
        }
        guard (st.st_mode & S_IFMT) == S_IFDIR else {
            guard unlink(directory) == 0 else { throw Failure(description: "unlink \(directory): \(text(errno))") }
            return
        }
        let fd = open(directory, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { throw Failure(description: "open \(directory): \(text(errno))") }
        removeContents(fd, depth: 0)
        close(fd)
        guard rmdir(directory) == 0 || errno == ENOENT else { throw Failure(description: "rmdir \(directory): \(text(errno))") }
    }

    private static func removeContents(_ dirFD: Int32, depth: Int) {
        guard depth < 16 else { return }
        let dup = fcntl(dirFD, F_DUPFD_CLOEXEC, 0)
        guard dup >= 0, let dir = fdopendir(dup) else { return }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        for name in names {
            var st = stat()
            guard fstatat(dirFD, name, &st, AT_SYMLINK_NOFOLLOW) == 0 else { continue }
            if (st.st_mode & S_IFMT) == S_IFDIR {
                let child = openat(dirFD, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                if child >= 0 {
                    removeContents(child, depth: depth + 1)
                    close(child)
                }
                _ = unlinkat(dirFD, name, AT_REMOVEDIR)
            } else {
                _ = unlinkat(dirFD, name, 0)
            }
        }
    }

    /// Session directories left by an earlier run (64 hex digit names only).
    public static func stale(in root: String) -> [String] {
        guard let dir = opendir(root) else { return [] }
        defer { closedir(dir) }
        var out: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name.utf8.count == 64, name.utf8.allSatisfy({ (48...57).contains($0) || (97...102).contains($0) }) {
                out.append(root + "/" + name)
            }
        }
        return out
    }

    public static func exists(_ path: String) -> Bool {
        var st = stat()
        return lstat(path, &st) == 0
    }

    static func text(_ code: Int32) -> String {
        strerror(code).map { String(cString: $0) } ?? "errno \(code)"
    }
}
#endif
