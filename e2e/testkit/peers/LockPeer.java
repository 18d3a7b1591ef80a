import java.io.BufferedReader;
import java.io.FileWriter;
import java.io.InputStreamReader;
import java.time.Instant;
import java.util.concurrent.TimeUnit;
import org.apache.curator.framework.CuratorFramework;
import org.apache.curator.framework.CuratorFrameworkFactory;
import org.apache.curator.framework.recipes.locks.InterProcessMutex;
import org.apache.curator.framework.recipes.locks.InterProcessReadWriteLock;
import org.apache.curator.framework.recipes.locks.InterProcessSemaphoreV2;
import org.apache.curator.framework.recipes.locks.Lease;
import org.apache.curator.retry.RetryNTimes;

/**
 * An Apache Curator lock client, driven by lockkeeper's interoperability tests and benchmarks.
 *
 * Usage: LockPeer CONNECT PATH KIND NAME hold
 *        LockPeer CONNECT PATH KIND NAME loop COUNT HOLD_MS LOG_FILE
 * KIND is mutex (InterProcessMutex), read or write (InterProcessReadWriteLock), or
 * semaphore:PERMITS (InterProcessSemaphoreV2).
 * hold: reads "acquire", "release" and "exit" from stdin, answers "acquired" and "released".
 * loop: takes the lock COUNT times for HOLD_MS each, appending "enter NAME MICROS" right after
 * each acquire and "leave NAME MICROS" right before each release to LOG_FILE.
 */
public final class LockPeer {
    interface Held {
        void release() throws Exception;
    }

    interface Acquirer {
        Held acquire() throws Exception;
    }

    public static void main(String[] args) throws Exception {
        String connect = args[0];
        String path = args[1];
        String kind = args[2];
        String name = args[3];
        String mode = args[4];
        CuratorFramework client =
                CuratorFrameworkFactory.newClient(connect, 30000, 15000, new RetryNTimes(10, 200));
        client.start();
        if (!client.blockUntilConnected(30, TimeUnit.SECONDS)) {
            System.err.println("curator peer " + name + ": not connected to " + connect);
            System.exit(2);
        }
        Acquirer acquirer = acquirer(client, path, kind);
        if (mode.equals("hold")) {
            hold(acquirer);
        } else {
            loop(acquirer, name, Integer.parseInt(args[5]), Long.parseLong(args[6]), args[7]);
        }
        client.close();
    }

    static Acquirer acquirer(CuratorFramework client, String path, String kind) {
        if (kind.equals("mutex")) {
            InterProcessMutex mutex = new InterProcessMutex(client, path);
            return () -> {
                mutex.acquire();
                return mutex::release;
            };
        }
        if (kind.equals("read") || kind.equals("write")) {
            InterProcessReadWriteLock rw = new InterProcessReadWriteLock(client, path);
            InterProcessMutex side = kind.equals("read") ? rw.readLock() : rw.writeLock();
            return () -> {
                side.acquire();
                return side::release;
            };
        }
        if (kind.startsWith("semaphore:")) {
            int permits = Integer.parseInt(kind.substring("semaphore:".length()));
            InterProcessSemaphoreV2 semaphore = new InterProcessSemaphoreV2(client, path, permits);
            return () -> {
                Lease lease = semaphore.acquire();
                return lease::close;
            };
        }
        throw new IllegalArgumentException("unknown lock kind " + kind);
    }

    static void hold(Acquirer acquirer) throws Exception {
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in));
        Held held = null;
        String line;
        while ((line = in.readLine()) != null) {
            if (line.equals("acquire")) {
                held = acquirer.acquire();
                System.out.println("acquired");
            } else if (line.equals("release")) {
                held.release();
                held = null;
                System.out.println("released");
            } else if (line.equals("exit")) {
                break;
            }
            System.out.flush();
        }
    }

    static void loop(Acquirer acquirer, String name, int count, long holdMillis, String logFile)
            throws Exception {
        try (FileWriter log = new FileWriter(logFile, true)) {
            for (int i = 0; i < count; i++) {
                Held held = acquirer.acquire();
                log.write("enter " + name + " " + micros() + "\n");
                log.flush();
                if (holdMillis > 0) {
                    Thread.sleep(holdMillis);
                }
                log.write("leave " + name + " " + micros() + "\n");
                log.flush();
                held.release();
            }
        }
    }

    static long micros() {
        Instant now = Instant.now();
        return now.getEpochSecond() * 1_000_000L + now.getNano() / 1_000;
    }
}
