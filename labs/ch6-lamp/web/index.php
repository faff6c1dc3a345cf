<?php
// 6.3: the page reads the rows that sql/setup.sql wrote, from the database container
// reached through --link (the alias "db" is in this container's /etc/hosts).
// Connection settings come from `docker run -e` (see run-web.sh); nothing is hard-coded.
header('Content-Type: text/html; charset=utf-8');

$host = getenv('DB_HOST') ?: 'db';
$name = getenv('DB_DATABASE') ?: 'app';
$user = getenv('DB_USER') ?: 'app';
$pass = getenv('DB_PASSWORD');
$h = fn($s) => htmlspecialchars((string)$s, ENT_QUOTES, 'UTF-8');

echo "<!DOCTYPE html>\n<html lang=\"zh-CN\"><head><meta charset=\"utf-8\"><title>vmdock ch6-lamp</title></head><body>\n";
echo "<h1>Apache + PHP + MySQL (MariaDB)</h1>\n";

if ($pass === false || $pass === '') {
    http_response_code(500);
    echo "<p>DB_PASSWORD is not set: start the container with -e DB_PASSWORD</p></body></html>\n";
    exit;
}

try {
    $pdo = new PDO("mysql:host=$host;port=3306;dbname=$name;charset=utf8mb4", $user, $pass, [
        PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION,
        PDO::ATTR_TIMEOUT => 5,
    ]);
    $server = $pdo->query('SELECT VERSION() AS version, @@hostname AS hostname')->fetch(PDO::FETCH_ASSOC);
    $rows = $pdo->query('SELECT id, section, title, then_now FROM sections ORDER BY id')->fetchAll(PDO::FETCH_ASSOC);
} catch (PDOException $e) {
    http_response_code(500);
    echo "<p>database error: " . $h($e->getMessage()) . "</p></body></html>\n";
    exit;
}

echo "<p>Server: " . $h($server['version']) . " in container " . $h($server['hostname'])
   . ", reached as <code>" . $h($host) . "</code> (" . $h(gethostbyname($host)) . ") through --link</p>\n";
echo "<p>Link environment: DB_NAME=" . $h(getenv('DB_NAME')) . " DB_PORT=" . $h(getenv('DB_PORT')) . "</p>\n";
echo "<p>" . count($rows) . " rows in " . $h($name) . ".sections:</p>\n<ul>\n";
foreach ($rows as $r) {
    echo "<li>" . $h($r['id']) . " | " . $h($r['section']) . " | " . $h($r['title']) . " | " . $h($r['then_now']) . "</li>\n";
}
echo "</ul>\n</body></html>\n";
