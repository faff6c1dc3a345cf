-- The setup script of 6.3: creates a table and writes the rows the PHP page shows.
-- Run as the application user, from a client container linked to the database
-- (see lab.yaml). Safe to run again: the rows are upserted, not duplicated.
SET NAMES utf8mb4;

CREATE TABLE IF NOT EXISTS sections (
    id       INT          NOT NULL PRIMARY KEY,
    section  VARCHAR(16)  NOT NULL,
    title    VARCHAR(64)  NOT NULL,
    then_now VARCHAR(128) NOT NULL
) DEFAULT CHARSET = utf8mb4;

INSERT INTO sections (id, section, title, then_now) VALUES
    (1, '6.1', '构建mysql镜像',      'MySQL then, MariaDB (Debian 12) now'),
    (2, '6.2', '构建apache+php镜像', 'PHP 5 then, Apache 2.4 with PHP 8.2 now'),
    (3, '6.3', '启动容器',           '--link then, user-defined networks now')
ON DUPLICATE KEY UPDATE
    section = VALUES(section), title = VALUES(title), then_now = VALUES(then_now);
