# Groups (protocol v2.0), written by hand: aerich cannot make a column nullable
# on SQLite, which chat_message.receiver_id must become (a group message has no
# receiver), so the table is rebuilt the way SQLite documents (create, copy,
# drop, rename), keeping every row, id and change number. MODELS_STATE is the
# models' state, as aerich wrote it for the MySQL migration of the same name.
from tortoise import BaseDBAsyncClient

RUN_IN_TRANSACTION = True


async def upgrade(db: BaseDBAsyncClient) -> str:
    return """
        CREATE TABLE IF NOT EXISTS "chat_group" (
    "id" VARCHAR(64) NOT NULL PRIMARY KEY,
    "title" VARCHAR(100) NOT NULL,
    "avatar" VARCHAR(1024),
    "created_by" VARCHAR(64) NOT NULL,
    "created_at" TIMESTAMP NOT NULL,
    "client_request_id" VARCHAR(64),
    "member_count" INT NOT NULL,
    "message_count" BIGINT NOT NULL,
    "last_message_id" BIGINT NOT NULL,
    "last_at" TIMESTAMP NOT NULL,
    "change_seq" BIGINT NOT NULL,
    CONSTRAINT "uid_chat_group_created_1b5b59" UNIQUE ("created_by", "client_request_id")
) /* A group conversation: its title, and the counts each unread count is worked out from. */;
CREATE TABLE IF NOT EXISTS "chat_group_member" (
    "id" INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    "group_id" VARCHAR(64) NOT NULL,
    "user_id" VARCHAR(64) NOT NULL,
    "role" SMALLINT NOT NULL,
    "active" INT NOT NULL,
    "joined_at" TIMESTAMP NOT NULL,
    "joined_row" BIGINT NOT NULL,
    "delivered_upto" BIGINT NOT NULL,
    "read_upto" BIGINT NOT NULL,
    "read_messages" BIGINT NOT NULL,
    "own_unread" INT NOT NULL,
    "change_seq" BIGINT NOT NULL,
    CONSTRAINT "uid_chat_group__group_i_885941" UNIQUE ("group_id", "user_id")
) /* One user in one group: role, and positions. Kept after they leave, inactive. */;
CREATE INDEX IF NOT EXISTS "idx_member_user" ON "chat_group_member" ("user_id", "active");
CREATE INDEX IF NOT EXISTS "idx_member_group" ON "chat_group_member" ("group_id", "active", "joined_at");
CREATE TABLE "chat_message_v2" (
    "id" INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    "uuid" CHAR(36) NOT NULL UNIQUE,
    "sender_id" VARCHAR(64) NOT NULL,
    "receiver_id" VARCHAR(64),
    "pair_key" VARCHAR(132) NOT NULL,
    "group_id" VARCHAR(64),
    "text" TEXT NOT NULL,
    "status" SMALLINT NOT NULL,
    "client_message_id" VARCHAR(64),
    "created_at" TIMESTAMP NOT NULL,
    "change_seq" BIGINT NOT NULL,
    "recipient_count" INT NOT NULL DEFAULT 1,
    "delivered_count" INT NOT NULL DEFAULT 0,
    "read_count" INT NOT NULL DEFAULT 0,
    CONSTRAINT "uid_chat_messag_sender__574a46" UNIQUE ("sender_id", "client_message_id")
);
INSERT INTO "chat_message_v2" (
    "id", "uuid", "sender_id", "receiver_id", "pair_key", "text", "status",
    "client_message_id", "created_at", "change_seq"
) SELECT
    "id", "uuid", "sender_id", "receiver_id", "pair_key", "text", "status",
    "client_message_id", "created_at", "change_seq"
FROM "chat_message";
DROP TABLE "chat_message";
ALTER TABLE "chat_message_v2" RENAME TO "chat_message";
CREATE INDEX "idx_message_pair" ON "chat_message" ("pair_key", "id");
CREATE INDEX "idx_message_inbox" ON "chat_message" ("receiver_id", "status", "sender_id");
CREATE INDEX "idx_message_sent_seq" ON "chat_message" ("sender_id", "change_seq", "id");
CREATE INDEX "idx_message_recv_seq" ON "chat_message" ("receiver_id", "change_seq", "id");
CREATE INDEX "idx_message_group_seq" ON "chat_message" ("group_id", "change_seq", "id");"""


async def downgrade(db: BaseDBAsyncClient) -> str:
    return """
        """


MODELS_STATE = (
    "eJztXFtT2zgU/iuaPNEZloFAgeUtULbLLiQ7Jex22um4SqwkWnyrJAOZLv99j2Q7tnzDDg"
    "GC8RO2dD7J+Y58bpL52bFdk1h868R1bgjjWFDX6Ryhnx0H2wQucvs3UQd7XtwrGwQeWQow"
    "nmFhjNPiIy4YHgsQmGCLE2gyCR8z6oUTdgYOQcy9RR5haMO9dQjbhGvC3h0hMSNoRrCJ3I"
    "m6FjMm7zBXd0oWcUI4omJLTma6Y5iNOtMVj+s79IdPDOFOCQgwGP3r144SM6gpBeS48vLb"
    "N7ihjknuCJdSPzsTSixTXWsAC3NhYNGR8uTOY4RzoEPJyaZIB9S80xg11BiK9bmnJDpqAK"
    "BY3dxLsHdtqFk1bQbTqnYjwh7T6ZkjflOykr0RzGX5thPLe3Mxg1kjAHWEbJ0SeAgsiJxB"
    "MF/q1PEtK1wHkZoD0mKRgJYExiQT7FtyZUh08ABxW8cw+oOhcXk6NIxOZtVEiITCwyagS6"
    "44eFSuCJjKR/jl1253d/egu727f/h+7+Dg/eH2odSC7Mt2HdwHDxOzFQylODv7eNYfygdy"
    "YVkHC1823CsMFtiINR6zn1S9roOTGWb5GtDWl64H+IFpPUSslykiaog1Eb+Sz6EKG98ZFn"
    "GmYga3+3slLP/d+3Tye+/Txv7eO53qftjTVV2S9Jjk6CWswXEC0lJcgWJltmwwVnhKcqku"
    "Myk54Ifty2sg/RlNTEoVWGRV8AGYE9QmJUoIYCnyzRC3FV28QlWUsDo8uzi9HPYu/pLD25"
    "z/sBRZveGp7Omq1nmqdWM/9W4sBkH/nA1/R/IWfRn0TxWdLhdTpmaM5YZfOvKZsC9cw3Fv"
    "DWwmOYmaoyblvifXCRciG0Z4fH2LmWlketyuWySb7bK7droFO/AqmiGb8jkXMZ/vCBXn5I"
    "SDQVeVSDCWfDAI7MMsJgohfAsNIQ77DsM4U/JdRXEuM6EDEQiF5uiWUUHQxGXocu6M0dhn"
    "3AVUJgRc2ag5AWAq0isMvNTfGi4pkl+NP3rZ2EvzRrvdCt5ot1vojWRXeZR1gy0/h+syn7"
    "SAPJ8n2n71bmhNrNRH5vpeno0KOh62UNOF3IP2qYeUMEomY0eQHkLGSIUFAOyYKnlUxgYs"
    "Ch7PkO+otFI1IcrRrcuuwR65vkAT5tpZe/Vks+QmsGPAwdI2RnMpMrYocYTBCAhCiJCTzN"
    "bKLYsN3CrD7TUyb6sKtovNm1oDdZheABqY2+xsb1fgG6QKCVd9ekyNb4B7VofiGLEUx+Fy"
    "XVeKu1XWtBQrIbmbSSJ1u1OVaR3VwBW9+mw9oqx+lqgj20Rx7RJFTc0Zz13ntcoDN8+Wrf"
    "7lsok9IizIcrOEFyYcaViTKmDdnb2DvcPd/b1FxrFoKUs0srWtqEhYQG5ZQpeBtondI+qL"
    "r7LU20A9tHXeBrtvVY80OPlR7x3TcU3yI2+shHWhQoJOUSEr7N6sVs4y7Fi80tELnxOGqI"
    "NcuFYjHCHmRrUmWOtUCvMt9CfxBMITAdJiRubIIvgGpKgDM9Abkn/+YpWD59awgt8ceBg5"
    "2YOHMCIhyY8au8oRjDBok1hFe/7ZC/lSJ2ZKPlo4FVz961InSKyqz7uoU7aHPtbNjmyW1O"
    "uSC6BqOpbEtDWOCmlY4n2uynEC0lJcgWJpsbP8XtrYsgotSYRpTNS/2z3YX1gPeVNmLy4v"
    "eufn2VA+9gIpk+wCW9gpqDAvQCkuR4B6KjIjY/28ofvxYHCuRe3HZymj27+6OD79tLGjVi"
    "8IUVGQNcVuNsN2ed6kAdvMaa0zp1BXDLprhTk6rs2clq5NQB4CtokBl74n3HpKyGJbRSyt"
    "CHkCYAkdaLCW/sfRH5Y7+RIqSEJbNSytBvfWMYLTMDU2ZHRQY+LVle3FtOXJt1uevAjsUi"
    "enNBl1bT5YlrQTkg9VJItVkVv94wQWQpTLhzvZiV2n0kKghykzrok6TSJlNytU44KRJbJ6"
    "GZCRMZGBTviUXGDhK5bih68xN3VG7l31yXWCtDey3rxcUhsil/rdj5kchrqpN3myjPaYmY"
    "Nxyqduq69rWX31/Tz+r67OPhRUBf1c/mXzlkQt469eVA0ljAZH7YPUPZmUq9+pu3/NglSt"
    "sGqgtsZapcaqW8uqRKdg7bmtCl+JJvx+VZqTmAYu551Kn+bslHybsxN9nPPCu19vbC0LCE"
    "Oy/A6hteCDgFC+EWu4rJJ9+nmoFbEjEjcuep/faYXs80H/YySeIP3kfHCc9oSLyL3ORliM"
    "akxpYRVbYdlkrYaZyAW39qL9IKDdF2tLdutQiIawnHrKRtX9PCAH+Xx62HlaJaysJB1vHd"
    "alNwfZGLe8MnrVllT9hYtbUlOkrkkV/4rnny6+4pWOFUenXldbvG+/LV+rb8tNyj0Lz426"
    "/60kjWteFP4kH5oL95o4tcnWUS3V7Tf9a/NNv++ZS2aWOrLNLNcus1yTKKZHGB3P8uKYsK"
    "c0ksGxzNqEMW9lI/iRiUnJ//sijIf/ZriqbU9AGlEE16179/37CsYdpAptu+pLOVDPq+U9"
    "A/EGsvsk4QnMKEhepv3H5aBfUKaLIWl3SccC/Ycsyl9jra6EXElG+YZOeu8m5fzkAMcvnZ"
    "Lf/w9XUKOO"
)
