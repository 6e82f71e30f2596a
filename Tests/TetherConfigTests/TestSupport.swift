import Foundation
@testable import TetherConfig

/// A private directory per test, removed at deinit.
final class Scratch {
    let url: URL

    init() throws {
        url = FileManager.default.temporaryDirectory.appendingPathComponent("tether-config-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }

    deinit { try? FileManager.default.removeItem(at: url) }

    @discardableResult
    func write(_ name: String, _ text: String) throws -> String {
        let path = url.appendingPathComponent(name).path
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    func path(_ name: String) -> String { url.appendingPathComponent(name).path }
}

/// Loads with the given sources; no process environment leaks in.
func load(file: String? = nil, env: [String: String] = [:], flags: [String] = [],
          verify: Bool = true) throws(ConfigurationError) -> LoadedConfiguration {
    var loader = ConfigurationLoader(arguments: flags, environment: env, configFile: file)
    loader.verifyReferencedFiles = verify
    return try loader.load()
}

/// The issues of a load that must fail.
func issues(file: String? = nil, env: [String: String] = [:], flags: [String] = []) -> [ConfigurationIssue] {
    do {
        _ = try load(file: file, env: env, flags: flags)
        return []
    } catch {
        return error.issues
    }
}

/// The repository root, from this file's path.
let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent()
