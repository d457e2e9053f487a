// Apache Curator's InterProcessMutex, driven line by line from a test (stdin -> stdout), with
// the same commands as kazoo_lock.py:
//   java -cp <Debian's Curator and ZooKeeper jars> CuratorLock.java HOSTS PATH
//   try -> acquired | busy;  acquire SECS -> acquired | timeout;  release -> released;
//   nodes -> the lock directory's children, space-separated;  quit
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.util.Collections;
import java.util.List;
import java.util.concurrent.TimeUnit;

import org.apache.curator.framework.CuratorFramework;
import org.apache.curator.framework.CuratorFrameworkFactory;
import org.apache.curator.framework.recipes.locks.InterProcessMutex;
import org.apache.curator.retry.RetryNTimes;

public class CuratorLock {
    public static void main(String[] args) throws Exception {
        String hosts = args[0], path = args[1];
        CuratorFramework client = CuratorFrameworkFactory.newClient(hosts, 10000, 10000,
                new RetryNTimes(3, 100));
        client.start();
        client.blockUntilConnected(15, TimeUnit.SECONDS);
        InterProcessMutex lock = new InterProcessMutex(client, path);
        System.out.println("ready");
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in));
        String line;
        while ((line = in.readLine()) != null) {
            String[] cmd = line.trim().split("\\s+");
            switch (cmd[0]) {
                case "try":
                    System.out.println(lock.acquire(0, TimeUnit.MILLISECONDS) ? "acquired" : "busy");
                    break;
                case "acquire":
                    long ms = (long) (Double.parseDouble(cmd[1]) * 1000);
                    System.out.println(lock.acquire(ms, TimeUnit.MILLISECONDS) ? "acquired" : "timeout");
                    break;
                case "release":
                    lock.release();
                    System.out.println("released");
                    break;
                case "nodes":
                    List<String> c = client.getChildren().forPath(path);
                    Collections.sort(c);
                    System.out.println(String.join(" ", c));
                    break;
                case "quit":
                    client.close();
                    return;
                default:
                    System.out.println("unknown " + cmd[0]);
            }
            System.out.flush();
        }
        client.close();
    }
}
