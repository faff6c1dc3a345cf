// Runs once, on the first start of an empty data directory (the official image's
// /docker-entrypoint-initdb.d/), in mongosh, logged in as the root user.
// Creates the application's user with readWrite on the application's database
// only; its password comes from the environment (MONGO_APP_PASSWORD, a secret
// generated for this lab instance), never from this file.
const dbName = process.env.MONGO_INITDB_DATABASE || 'dlnnm';
const user = process.env.MONGO_APP_USER || 'dlnnm';
const pwd = process.env.MONGO_APP_PASSWORD;
if (!pwd) {
  throw new Error('MONGO_APP_PASSWORD is not set');
}
const appDb = db.getSiblingDB(dbName);
if (appDb.getUser(user) === null) {
  appDb.createUser({ user: user, pwd: pwd, roles: [{ role: 'readWrite', db: dbName }] });
  print(`init-app-user: created user ${user} (readWrite on ${dbName})`);
} else {
  print(`init-app-user: user ${user} exists`);
}
appDb.notes.createIndex({ createdAt: -1 });
