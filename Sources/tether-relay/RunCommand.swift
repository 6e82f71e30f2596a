import CJemalloc
import Glibc
import Logging
import TetherConfig
import TetherRelay

/// `tether-relay [run] [flags]`: load the configuration, start, and turn signals into reload,
/// drain and stop.
enum RunCommand {
    static func main(_ arguments: [String]) -> Never {
        let loader = ConfigurationLoader(arguments: arguments, environment: ConfigurationLoader.processEnvironment)
        if loader.wantsHelp {
            Output.standardOutput(ConfigurationDoc.help())
            exit(0)
        }
        let loaded: LoadedConfiguration
        do {
            loaded = try loader.load()
        } catch {
            Output.report(error, file: loader.resolvedConfigFile)
            exit(1)
        }
        RelayLogging.bootstrap(loaded.relay.logging)
        let logger = Logger(label: "tether.relay")
        let configLogger = Logger(label: "tether.config")
        for warning in loaded.warnings { configLogger.warning("\(warning)") }
        configLogger.debug("configuration loaded", metadata: [
            "file": "\(loaded.configFile ?? "none")",
            "sources": "\(loaded.sourceCounts)",
        ])

        // Signals are taken synchronously by this thread (sigwait); workers inherit the mask.
        signal(SIGPIPE, SIG_IGN)
        var signals = sigset_t()
        sigemptyset(&signals)
        for s in [SIGHUP, SIGTERM, SIGINT] { sigaddset(&signals, s) }
        pthread_sigmask(SIG_BLOCK, &signals, nil)

        // A reload reads the file and the environment again, with the flags given at start. The
        // relay decides what applies and names what needs a restart.
        let reload: @Sendable () throws -> RelayConfiguration = {
            var again = loader
            again.environment = ConfigurationLoader.processEnvironment
            let next = try again.load()
            for warning in next.warnings { configLogger.warning("\(warning)") }
            return next.relay
        }

        let relay: Relay
        do {
            relay = try Relay(configuration: loaded.relay, logger: logger, reload: reload)
            try relay.start()
        } catch {
            logger.critical("cannot start", metadata: ["error": "\(error)"])
            exit(1)
        }
        if let version = tether_jemalloc_version() {
            logger.debug("allocator", metadata: ["jemalloc": "\(String(cString: version))"])
        }
        while true {
            var received: Int32 = 0
            guard sigwait(&signals, &received) == 0 else { continue }
            if received == SIGHUP {
                relay.requestReload()
                continue
            }
            logger.info("shutting down", metadata: ["signal": "\(received)"])
            if received == SIGTERM {
                relay.drain(deadlineSeconds: relay.configuration.drainTimeoutSeconds)
            } else {
                relay.shutdown()
            }
            exit(0)
        }
    }
}
